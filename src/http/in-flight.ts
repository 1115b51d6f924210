import type { FastifyInstance } from 'fastify'
import { GatewayError } from '../errors/catalogue.js'
import { clientGone } from '../relay/lifetime.js'

/**
 * A cap on this instance's image requests in flight, from their headers to the end of their answer
 * (or the client leaving). Past it a request is refused at once, before its body is read, with
 * 503 server_busy and retry-after: 1, which the OpenAI SDKs retry; nothing queues. 0: no cap.
 * Registered in the image routes' scope, after authentication, so a caller without a key learns
 * nothing about load, and before the requests-per-minute count, so a refusal costs the key nothing.
 */
export function capInFlight(app: FastifyInstance, max: number): void {
  if (max === 0) return
  let inFlight = 0
  // A callback hook, not an async one: no promise per request on the hot path.
  app.addHook('onRequest', (_request, reply, done) => {
    if (inFlight >= max) {
      done(
        new GatewayError('server_busy', 'The gateway is handling too many image requests right now. Retry shortly.', {
          headers: { 'retry-after': '1' }
        })
      )
      return
    }
    // A client that left before this hook ran (while its key was looked up, say) has had its
    // 'close' already: counting it would hold a slot for good. It is not in flight any more.
    if (!clientGone(reply)) {
      inFlight += 1
      // 'close' comes once per answer, whether it finished or the client left.
      reply.raw.once('close', () => {
        inFlight -= 1
      })
    }
    done()
  })
}
