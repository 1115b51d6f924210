import type { ResponseFormat } from '../images/hosting.js'
import type { Fields } from '../openai/validate.js'
import type { RoutedModel } from '../providers/registry.js'

/**
 * How the client wants its images, when the gateway answers `response_format` for the model
 * (`hostImages`, docs/images.md); null: as the upstream gives them. Event streams are left as they
 * are. With no `response_format`, OpenAI's default for the model: a link for DALL-E, base64 for GPT
 * image models (which is what their upstream sends, so nothing is done).
 */
export function wantedFormat(routed: RoutedModel, fields: Fields): ResponseFormat | null {
  if (!routed.hostImages) return null
  const stream = fields.get('stream')
  if (stream === true || stream === 'true') return null
  const value = fields.get('response_format')
  if (value === 'url' || value === 'b64_json') return value
  return routed.rules !== null && routed.rules.family !== 'gpt-image' ? 'url' : null
}
