import type { CostModel } from '../limits/charge.js'
import { actualMicroUsd, resolvePrices, worstCaseMicroUsd, type PriceTable } from './prices.js'

/** The configured prices (over the shipped defaults) as the charging path uses them. */
export function priceCostModel(configured: PriceTable | undefined): CostModel {
  const prices = resolvePrices(configured)
  return {
    worstCase: (model, endpoint, fields) => worstCaseMicroUsd(model, endpoint, fields, prices),
    actual: (model, endpoint, fields, tapped) =>
      actualMicroUsd(model, endpoint, fields, tapped.usage, prices, tapped.imagesReturned),
    priced: (model) => Object.hasOwn(prices, model)
  }
}
