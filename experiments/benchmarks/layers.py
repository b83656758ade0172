"""The torchvision variant's convolutions at 224x224, as the per-layer
scripts beside this one time them: (H, Cin, Cout, kernel, stride, pad)."""

TORCHVISION_CONVS = (
    (224, 3, 64, 11, 4, 2),
    (27, 64, 192, 5, 1, 2),
    (13, 192, 384, 3, 1, 1),
    (13, 384, 256, 3, 1, 1),
    (13, 256, 256, 3, 1, 1),
)
