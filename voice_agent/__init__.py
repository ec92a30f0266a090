"""voice-agent: a real-time voice assistant appliance that runs entirely on the device."""

__version__ = "0.1.0"
