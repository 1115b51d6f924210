import type { FastifyInstance } from 'fastify'
import type { Registry } from '../providers/registry.js'
import type { DeploymentHealth } from '../routing/health.js'
import { requireAdminToken } from './admin-token.js'

export interface AdminDeploymentsOptions {
  registry: Registry
  health: DeploymentHealth
  adminToken: string | undefined
}

/**
 * GET /admin/deployments: each deployment's state (healthy, cooling, due for its probe), why and
 * until when it cools down (shared by every instance on one Redis), and this instance's recent
 * error rate and latency to the upstream's headers.
 */
export default async function adminDeploymentsRoutes(app: FastifyInstance, options: AdminDeploymentsOptions): Promise<void> {
  const { registry, health, adminToken } = options
  if (adminToken === undefined || adminToken === '') return
  requireAdminToken(app, adminToken)

  app.get('/admin/deployments', async () => {
    const data = [...registry.deployments.values()].map((deployment) => ({
      ...health.status(deployment.id),
      provider: deployment.provider.id,
      type: deployment.provider.config.type,
      upstreamModel: deployment.upstreamModel,
      models: [...registry.models.values()].filter((m) => m.deployments.some((d) => d.id === deployment.id)).map((m) => m.name),
      endpoints: Object.keys(deployment.targets)
    }))
    return { object: 'list', data }
  })
}
