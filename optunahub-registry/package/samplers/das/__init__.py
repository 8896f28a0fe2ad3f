from .sampler import DASSampler
from .sampler import SkipSpace


__all__ = ["DASSampler", "SkipSpace"]
