import type { FastifyInstance } from 'fastify'
import { releasedAt } from '../openai/models.js'
import type { Registry, RoutedModel } from '../providers/registry.js'
import { findModel } from '../relay/dispatch.js'

interface ModelObject {
  id: string
  object: 'model'
  created: number
  owned_by: string
}

function describe(model: RoutedModel): ModelObject {
  const known = releasedAt(model.name)
  return { id: model.name, object: 'model', created: known ?? 0, owned_by: known === null ? 'image-gateway' : 'openai' }
}

/** GET /v1/models and /v1/models/{model}, in OpenAI's list shape, from config. */
export default async function modelRoutes(app: FastifyInstance, options: { registry: Registry }): Promise<void> {
  const { registry } = options
  const list = { object: 'list', data: [...registry.models.values()].map(describe) }

  app.get('/v1/models', async () => list)

  app.get<{ Params: { model: string } }>('/v1/models/:model', async (request) =>
    describe(findModel(registry, request.params.model))
  )
}
