"""The backplane of several instances: Redis (or Valkey, the same protocol)."""

from chatservice.backplane.redis.backplane import RedisAddress, RedisBackplane, parse_redis_url

__all__ = ["RedisAddress", "RedisBackplane", "parse_redis_url"]
