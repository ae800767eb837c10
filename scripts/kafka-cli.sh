#!/usr/bin/env bash
# Run a Kafka CLI tool class with the jars cached by scripts/kafka.sh (fetched on first use).
#
#   scripts/kafka-cli.sh CLASS|ALIAS [ARGS...]
#
# Aliases: topics quorum api-versions storage configs console-producer console-consumer
#          consumer-groups groups features leader-election log-dirs delete-records dump-log
# Examples:
#   scripts/kafka-cli.sh topics --bootstrap-server "$(scripts/kafka.sh bootstrap)" --describe
#   scripts/kafka-cli.sh quorum --bootstrap-server 127.0.0.1:19092 describe --status
#   scripts/kafka-cli.sh org.apache.kafka.tools.ClusterTool cluster-id --bootstrap-server 127.0.0.1:19092
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/kafka.sh" cli "$@"
