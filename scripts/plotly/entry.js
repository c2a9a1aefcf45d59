// The traces the pages draw (static/js: scatter, bar, heatmap) on plotly.js's core, which brings the
// cartesian axes, legend, hover, shapes, annotations, colorbar and modebar. A trace type used by a page
// must be registered here (tests/browser/test_plotly_bundle.py checks it).
var Plotly = require("plotly.js/lib/core");

Plotly.register([require("plotly.js/lib/bar"), require("plotly.js/lib/heatmap")]);

module.exports = Plotly;
