"""A real Apache Kafka broker (KRaft mode) run from Maven Central jars, for development and tests."""
