"""Facts several modules share, kept once: MNIST's files, shape, classes and sizes, the
learning-rate schedules and the weight-initialisation schemes.

Standard library only (no numpy): the CLI, the config parser and `cnntrain summarize` import
it and must start at once.
"""

# The four MNIST files, as kept (decompressed) in the data folder.
TRAIN_IMAGES_FILE = "train-images-idx3-ubyte"
TRAIN_LABELS_FILE = "train-labels-idx1-ubyte"
TEST_IMAGES_FILE = "t10k-images-idx3-ubyte"
TEST_LABELS_FILE = "t10k-labels-idx1-ubyte"
MNIST_FILE_NAMES = (TRAIN_IMAGES_FILE, TRAIN_LABELS_FILE, TEST_IMAGES_FILE, TEST_LABELS_FILE)
IDX_UBYTE = 0x08  # the IDX element type of every MNIST file: unsigned bytes

IMAGE_HW = (28, 28)          # one digit's height and width, in pixels
INPUT_SHAPE = (1, *IMAGE_HW)  # what the network sees per image: (C, H, W), one grey channel
NUM_CLASSES = 10             # the digits 0..9
MNIST_TRAIN_IMAGES = 60000   # the training file's images (the validation set is held out of them)
MNIST_TEST_IMAGES = 10000

# Learning-rate schedules (cnntrain.nn.optim.LRSchedule) and weight initialisers (cnntrain.nn.init),
# also the choices of [train] lr_schedule and [model] init.
SCHEDULES = ("constant", "step", "cosine")
INIT_SCHEMES = ("he", "glorot")
