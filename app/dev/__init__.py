"""Developer tools: the embedded broker stack, Apache Kafka provisioning, demo and simulator."""
