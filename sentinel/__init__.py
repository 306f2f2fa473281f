"""Sentinel: a Kafka-class distributed log streaming engine on Trio."""

__version__ = "0.1.0"
