"""Training and evaluating the zoo's models on CIFAR: the training and validation scripts, data,
optimizer, checkpoints, recipes, the train queue, and the main job (``make main``). Tooling: the
library (``layers``, ``models``, ``pretrained``) never imports it."""
