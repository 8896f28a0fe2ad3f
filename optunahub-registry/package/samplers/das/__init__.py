from .sampler import DASSampler, SkipSpace

__all__ = ["DASSampler", "SkipSpace"]
