"""PyTorch reference of YOLACT: build-time tooling, which may import runtime/, never the reverse."""
