"""The backplane of several instances: Redis (or Valkey, the same protocol)."""

from chatservice.backplane.redis.address import RedisAddress, parse_redis_url
from chatservice.backplane.redis.backplane import RedisBackplane

__all__ = ["RedisAddress", "RedisBackplane", "parse_redis_url"]
