"""CIFAR-10's classes, in its label order (the class folders of the
package's cifar10_mini sample and of the shared JPEG copy)."""

CLASSES = (
    'airplane',
    'automobile',
    'bird',
    'cat',
    'deer',
    'dog',
    'frog',
    'horse',
    'ship',
    'truck',
)
