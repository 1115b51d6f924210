import type { ResponseFormat } from '../images/hosting.js'
import type { Fields } from '../openai/validate.js'
import type { RoutedModel } from '../providers/registry.js'

/**
 * How the client wants its images, when the gateway answers `response_format` for the model
 * (`hostImages`, docs/images.md); null: as the upstream gives them. Event streams are left as they
 * are. Where the upstream already answers what is asked (base64 from a GPT image model), nothing is
 * done and the answer streams through. With no `response_format`, OpenAI's default for the model: a
 * link for DALL-E (their answers are small, read whole in case the upstream sent base64), base64
 * for GPT image models.
 */
export function wantedFormat(routed: RoutedModel, fields: Fields): ResponseFormat | null {
  if (!routed.hostImages) return null
  const stream = fields.get('stream')
  if (stream === true || stream === 'true') return null
  const value = fields.get('response_format')
  const base64Upstream = routed.withholdResponseFormat
  if (value === 'url') return 'url'
  if (value === 'b64_json') return base64Upstream ? null : 'b64_json'
  return base64Upstream || routed.rules === null ? null : 'url'

}
