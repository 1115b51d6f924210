import type { Endpoint } from '../openai/models.js'
import type { Deployment } from '../providers/registry.js'
import type { DeploymentHealth } from './health.js'

/** Deployments in a weighted random order: each next one is drawn by weight from those left. */
function weightedOrder(deployments: Deployment[], random: () => number): Deployment[] {
  const left = [...deployments]
  const order: Deployment[] = []
  while (left.length > 0) {
    const total = left.reduce((sum, d) => sum + d.weight, 0)
    let draw = random() * total
    let index = left.findIndex((d) => (draw -= d.weight) < 0)
    if (index === -1) index = left.length - 1
    order.push(...left.splice(index, 1))
  }
  return order
}

/**
 * The order in which to try a model's deployments for one request: tiers by priority, lowest
 * first; within a tier, a deployment due for its probe first (one request tells whether it is back),
 * then the healthy ones by weight. Deployments cooling down are left out, unless every deployment
 * is: then they are all tried, the one whose cooldown ends first first, since refusing the request
 * would help no one. Deployments whose provider cannot serve the endpoint are never tried.
 */
export function candidates(
  deployments: readonly Deployment[],
  endpoint: Endpoint,
  health: DeploymentHealth,
  random: () => number = Math.random
): { order: Deployment[]; fallback: boolean } {
  // The common case, on every request: one deployment, nothing to order.
  const [only] = deployments
  if (deployments.length === 1 && only !== undefined) {
    if (only.targets[endpoint] === undefined) return { order: [], fallback: false }
    return { order: [only], fallback: health.availability(only.id) === 'cooling' }
  }
  const able = deployments.filter((d) => d.targets[endpoint] !== undefined)
  const tiers = [...new Set(able.map((d) => d.priority))].sort((a, b) => a - b)
  const order: Deployment[] = []
  for (const tier of tiers) {
    const members = able.filter((d) => d.priority === tier)
    order.push(...members.filter((d) => health.availability(d.id) === 'probe'))
    order.push(...weightedOrder(members.filter((d) => health.availability(d.id) === 'healthy'), random))
  }
  if (order.length > 0) return { order, fallback: false }
  return { order: [...able].sort((a, b) => health.coolingUntil(a.id) - health.coolingUntil(b.id)), fallback: true }
}
