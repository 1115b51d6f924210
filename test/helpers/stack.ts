import type { Test } from 'tap'
import { startFakeUpstream, type Behaviour, type FakeUpstream } from './fake-upstream.js'
import { startGateway, type Gateway, type GatewayOptions } from './gateway.js'
import { startRedis, type TestRedis } from './redis.js'

export interface StackOptions {
  /** How the fake upstream answers (its default: an empty 200). */
  behaviour?: Behaviour
  gateway?: Partial<GatewayOptions>
}

/** A fake upstream and a gateway relaying to it as provider `up`; both closed when the test ends. */
export async function startStack(t: Test, options: StackOptions = {}): Promise<{ upstream: FakeUpstream; gateway: Gateway }> {
  const upstream = await startFakeUpstream(options.behaviour)
  const gateway = await startGateway({ providers: { up: upstream.baseUrl }, ...options.gateway })
  t.teardown(async () => {
    await gateway.close()
    await upstream.close()
  })
  return { upstream, gateway }
}

/** The same, with the gateway's state in a real Redis (closed last). */
export async function startRedisStack(
  t: Test,
  options: StackOptions = {}
): Promise<{ upstream: FakeUpstream; gateway: Gateway; redis: TestRedis }> {
  const redis = await startRedis()
  t.teardown(() => redis.close())
  const stack = await startStack(t, {
    ...options,
    gateway: { redis: { url: redis.url, keyPrefix: redis.prefix }, ...options.gateway }
  })
  return { ...stack, redis }
}
