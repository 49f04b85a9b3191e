"""An image-generation Discord bot: providers, images, quotas, and the Discord edge."""

__version__ = "0.1.0"
