"""PyTorch reference of YOLACT. This package's __init__ and `config`/`metadata` stay free of torch:
the runtime imports them on deployment hosts that have no torch."""

__version__ = '0.1.0'
