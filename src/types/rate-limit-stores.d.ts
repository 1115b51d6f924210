// @fastify/rate-limit's two stores are CommonJS modules without type declarations of their own.
declare module '@fastify/rate-limit/store/LocalStore.js' {
  import type { RateLimitStore } from '../limits/requests-per-minute.js'
  const LocalStore: new (continueExceeding: boolean, exponentialBackoff: boolean, cache?: number) => RateLimitStore
  export default LocalStore
}

declare module '@fastify/rate-limit/store/RedisStore.js' {
  import type { RedisClient } from '../redis/client.js'
  import type { RateLimitStore } from '../limits/requests-per-minute.js'
  const RedisStore: new (continueExceeding: boolean, exponentialBackoff: boolean, redis: RedisClient, key?: string) => RateLimitStore
  export default RedisStore
}
