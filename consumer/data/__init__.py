"""Package data: the ImageNet-1k class names (`imagenet_classes.json`, Keras output order)."""
