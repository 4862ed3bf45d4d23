"""Using a trained model: inference, predict, serve (and its page), export, plots, maps,
and summaries of run folders."""
