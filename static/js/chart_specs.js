// What each of the run page's line charts draws: its series (from the stats or the eval records), axis
// titles with units, threshold lines. Chart titles and page order are the template's
// (templates/runs/_chart_list.html).

import { COLORS, INK } from "./plot_style.js";

// series: [column, legend name, colour, dash, y axis]; `scalable` charts have a logits / T view
export const STAT_CHARTS = [
  {
    id: "chart-entropy", yTitle: "entropy (nats)",
    series: (m) => [
      ["entropy_mean", "mean", COLORS.blue], ["entropy_p10", "10th percentile", COLORS.teal],
      ["entropy_min", "min", COLORS.purple], ["deploy_entropy_mean", `mean as deployed (T = ${m.deploy_temperature})`, COLORS.pink, "dot"],
      ["target_entropy_mean", "targets' mean", COLORS.grey, "dash"],
    ],
    // an external run's config may not name h_min (or T, below): then there is no line to draw
    thresholds: (m) => (m.min_entropy == null ? [] : [[m.min_entropy, `h_min = ${m.min_entropy} nats`]]),
  },
  {
    id: "chart-logits", yTitle: "logit (raw, before temperature)", scalable: true,
    scaledTitle: "Logits / T, as the softmax sees them", scaledYTitle: "logit / T",
    series: () => [
      ["logit_max", "max", COLORS.red], ["logit_min", "min", COLORS.blue],
      ["logit_spread_max", "max |z − its sample's mean| (the rule's measure)", COLORS.orange],
      ["logit_range", "range (max − min)", COLORS.grey, "dash"],
    ],
    // exploding_logits compares the spread / T with its limits: the lines sit where the rule fires
    thresholds: (m, s) => {
      if (m.temperature == null) return [];
      const k = s.scaled ? 1 : m.temperature;
      const [warn, crit] = [m.logit_warn * k, m.logit_crit * k];
      const how = s.scaled ? "" : ` (${m.logit_warn}·T, T = ${m.temperature})`;
      return [[warn, `exploding_logits at ±${warn}${how}; critical ±${crit}`], [-warn, ""]];
    },
  },
  {
    id: "chart-confidence", yTitle: "share of batch", yRange: [0, 1.02],
    series: (m) => [
      ["onehot_frac", "one-hot predictions (max p > 0.99)", COLORS.red],
      ["deploy_onehot_frac", `one-hot as deployed (T = ${m.deploy_temperature})`, COLORS.pink, "dot"],
      ["target_onehot_frac", "one-hot targets", COLORS.grey, "dash"], ["maxprob_mean", "mean max-probability", COLORS.blue],
      ["deploy_maxprob_mean", `max-probability as deployed`, COLORS.teal, "dot"], ["hist_top_share", "top-class share", COLORS.orange],
    ],
  },
  {
    id: "chart-loss", yTitle: "loss (batch mean)",
    series: () => [
      ["loss", "total", INK], ["loss_ce", "soft cross-entropy", COLORS.blue],
      ["loss_entropy", "entropy penalty", COLORS.orange], ["loss_final_l2", "final-layer L2", COLORS.green],
    ],
  },
  {
    // clipRate: the share of clipped batches among the last this many recorded points (right axis)
    id: "chart-grad", yTitle: "grad norm before clipping (L2)", y2Title: "share of batches clipped", clipped: true, clipRate: 50,
    series: () => [["grad_norm", "grad norm", COLORS.blue]],
    thresholds: (m) => (m.max_grad_norm == null ? [] : [[m.max_grad_norm, `clip at ${m.max_grad_norm}`]]),
  },
  {
    id: "chart-optim", yTitle: "learning rate", y2Title: "samples per second", y2Range: null, fromZero: true,
    series: () => [["lr", "learning rate", COLORS.purple], ["samples_per_s", "throughput (right axis)", COLORS.grey, "dot", "y2"]],
  },
  {
    id: "chart-head", yTitle: "‖W‖ (Frobenius norm)",
    series: () => [["head_weight_norm", "classifier (head) weight norm", COLORS.brown]],
  },
  {
    id: "chart-diversity", yTitle: "std of p across the batch (class mean)", y2Title: "effective number of classes", y2Range: null,
    series: () => [
      ["output_diversity", "predictions", COLORS.blue], ["target_diversity", "targets", COLORS.grey, "dash"],
      ["hist_eff_classes", "effective classes predicted (right axis)", COLORS.orange, "dot", "y2"],
    ],
  },
  {
    id: "chart-logit-stats", yTitle: "logit (raw, before temperature)",
    series: () => [
      ["logit_mean", "mean of the batch's logits", COLORS.blue], ["logit_std", "std of the batch's logits", COLORS.orange],
      ["logit_margin", "top-1 − top-2 margin (sample mean)", COLORS.green],
    ],
  },
];

export const EVAL_CHARTS = [
  {
    id: "chart-validation", yTitle: "loss (nats)", y2Title: "accuracy (share of val set)",
    series: (m) => [
      ["objective", "objective", INK], ["soft_ce", "soft cross-entropy", COLORS.blue],
      ["kl", "KL(target ‖ prediction)", COLORS.purple], ["deploy_kl", `KL as deployed (T = ${m.deploy_temperature})`, COLORS.pink, "dot"],
      ["accuracy", "accuracy (right axis)", COLORS.green, "dot", "y2"],
    ],
  },
  {
    id: "chart-calibration", yTitle: "calibration error (lower is better)",
    series: (m) => [
      ["ece", "ECE (15 bins)", COLORS.red], ["deploy_ece", `ECE as deployed (T = ${m.deploy_temperature})`, COLORS.pink, "dot"],
      ["ece_signed", "signed ECE (> 0: overconfident)", COLORS.orange, "dash"], ["brier", "Brier score", COLORS.brown],
    ],
  },
  {
    id: "chart-val-entropy", yTitle: "entropy (nats)", y2Title: "share of val set",
    series: (m) => [
      ["entropy_mean", "entropy", COLORS.blue], ["deploy_entropy_mean", `entropy as deployed (T = ${m.deploy_temperature})`, COLORS.pink, "dot"],
      ["target_entropy_mean", "targets' entropy", COLORS.grey, "dash"],
      ["onehot_frac", "one-hot (right axis)", COLORS.red, "solid", "y2"],
      ["deploy_onehot_frac", "one-hot as deployed (right axis)", COLORS.red, "dot", "y2"],
    ],
  },
];
