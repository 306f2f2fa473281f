"""The broker: topics, partitions, partition logs, the consumer-group coordinator."""
