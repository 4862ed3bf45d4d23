#!/usr/bin/env python3
"""Scoring a committee against scoring its networks one by one (issue #29: a committee of k
networks must score the test set in at most k times one network's time plus 10%).

    python benchmarks/bench_committee.py A.npz B.npz C.npz --mirror ../shared/mnist --repeat 5

For each checkpoint, one network's time is what `cnntrain eval CKPT` spends scoring the split
once MNIST's files are read: the split's pixels normalised by the network's own config
(cnntrain.data.mnist.normalised_split), then cnntrain.runs.train.evaluate. For k = 1..K (the
first k checkpoints given; K = 3 unless --max-k), the committee's time is what `cnntrain eval
CKPT...` spends on the same: the split's pixels as [0, 1] fields, once for all members
(field_split), every member's probabilities over them (each member normalising them its own
way), then score_committee. Reading the files and loading the checkpoints are left out of
both. Each time is the fastest of --repeat runs, the median in brackets; the ratio is the
committee's time / the sum of its members' times (k x one network's time when the members
are alike), which the issue wants at most 1.10.
Runs alternate (all singles, then each committee, per repeat) so that a change in the machine's
load touches both sides.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import pin_threads  # noqa: E402

TARGET = 1.10


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+", metavar="CKPT",
                    help="the networks, e.g. runs/bn-aug/seed-0/checkpoints/last.npz")
    ap.add_argument("--data-dir", help="where MNIST lives (default: as cnntrain eval finds it)")
    ap.add_argument("--mirror", action="append", default=[],
                    help="a folder or URL holding the MNIST files, tried first")
    ap.add_argument("--split", choices=("test", "val", "train"), default="test")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each timing (default 3)")
    ap.add_argument("--max-k", type=int, default=3, help="largest committee timed (default 3)")
    ap.add_argument("--batch-size", type=int,
                    help="images per forward pass (default: the first config's eval_batch_size)")
    ap.add_argument("--combine", choices=("mean", "vote"), default="vote")
    ap.add_argument("--threads", type=int, help="BLAS threads (default: the CPUs available)")
    return ap.parse_args()


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main():
    args = parse_args()
    threads = pin_threads(args.threads, "bench_committee.py")

    import numpy as np

    from cnntrain.apps.committee import Committee, load_model
    from cnntrain.data.mnist import field_split, normalised_split
    from cnntrain.runs.evaluate_committee import member_probabilities, score_committee, split_source
    from cnntrain.runs.train import evaluate

    paths = args.checkpoints
    # A Committee even of one checkpoint (tta makes it one), for its members and their names;
    # the committees timed below are built without tta.
    everyone = load_model(paths, combine=args.combine, tta=True)
    members = everyone.members
    images, labels, index = split_source(members, args.split, data_dir=args.data_dir,
                                         mirrors=args.mirror, progress=False)
    batch = args.batch_size or members[0].config.train.eval_batch_size
    ks = range(1, min(args.max_k, len(members)) + 1)
    committees = {k: Committee(members[:k], combine=args.combine, names=everyone.names[:k])
                  for k in ks}

    def alone(member):
        data = member.config.data
        chosen = normalised_split(images, labels, index, mean=data.mean, std=data.std,
                                  dtype=member.network.dtype)
        return evaluate(member.network, chosen.images, chosen.labels, batch)

    def together(committee):
        chosen = field_split(images, labels, index)
        return score_committee(member_probabilities(committee, chosen.images[:, 0], batch),
                               chosen.labels, committee.combine)

    single = {i: [] for i in range(len(members))}
    joint = {k: [] for k in ks}
    answers = {}
    for _ in range(args.repeat):
        for i, member in enumerate(members):
            seconds, result = timed(lambda m=member: alone(m))
            single[i].append(seconds)
            answers[i] = result["accuracy"]
        for k, committee in committees.items():
            seconds, result = timed(lambda c=committee: together(c))
            joint[k].append(seconds)
            # The committee path scores each member as `eval CKPT` does.
            assert np.allclose([m["accuracy"] for m in result["members"]],
                               [answers[i] for i in range(k)])
    n = len(labels) if index is None else len(index)

    print(f"{n} {args.split} images, batch {batch}, {threads} thread(s), "
          f"{args.repeat} repeat(s), combine {args.combine}; seconds: fastest (median)")
    for i, name in enumerate(everyone.names):
        print(f"  one network  {name:<24} {min(single[i]):8.3f} "
              f"({statistics.median(single[i]):.3f})   accuracy {100 * answers[i]:.2f}%")
    worst = 0.0
    for k in ks:
        members_alone = sum(min(single[i]) for i in range(k))
        ratio = min(joint[k]) / members_alone
        worst = max(worst, ratio)
        print(f"  committee k={k}  {min(joint[k]):8.3f} ({statistics.median(joint[k]):.3f})"
              f"   sum of its members alone {members_alone:.3f}   ratio {ratio:.3f}")
    verdict = "within" if worst <= TARGET else "OVER"
    print(f"worst ratio {worst:.3f}: {verdict} the issue's bound of {TARGET:.2f}")


if __name__ == "__main__":
    main()
