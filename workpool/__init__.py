"""workpool: queue-driven, elastic batch scoring of images.

This package holds what the three roles (producer, consumer, orchestration) share: settings,
the message schema, errors, the work-queue interface with its backends, and the object stores
that serve as image sources and result stores.
"""

__version__ = "0.1.0"
