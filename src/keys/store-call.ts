import { whenReady, type RedisClient } from '../redis/client.js'
import { StoreUnavailableError } from './types.js'

/**
 * A Redis store's call: waits for the connection to be ready, and turns any Redis failure into a
 * StoreUnavailableError, which the routes answer with 503 (never 401, never a hang).
 */
export async function storeCall<T>(redis: RedisClient, operation: () => Promise<T>): Promise<T> {
  try {
    await whenReady(redis)
    return await operation()
  } catch (error) {
    throw error instanceof StoreUnavailableError ? error : new StoreUnavailableError(error)
  }
}
