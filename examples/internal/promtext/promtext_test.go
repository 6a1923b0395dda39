package promtext_test

import (
	"bufio"
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/meshblocks/meshblocks/examples/internal/promtext"
)

func TestEscaping(t *testing.T) {
	assert.Equal(t, `a\\b\"c\nd`, promtext.EscapeLabel("a\\b\"c\nd"))
	assert.Equal(t, `a\\b"c\nd`, promtext.EscapeHelp("a\\b\"c\nd"))
	assert.Equal(t, "plain", promtext.EscapeLabel("plain"))
}

func TestLabelStringSorts(t *testing.T) {
	ls := []promtext.Label{{"z", "1"}, {"a", `q"`}}
	assert.Equal(t, `{a="q\"",z="1"}`, promtext.LabelString(ls))
	assert.Equal(t, "z", ls[0].Name, "the input is not modified")
}

func TestFormatValue(t *testing.T) {
	assert.Equal(t, "3", promtext.FormatValue(3))
	assert.Equal(t, "0.25", promtext.FormatValue(0.25))
	assert.Equal(t, "+Inf", promtext.FormatValue(math.Inf(1)))
}

func write(f interface{ Write(*bufio.Writer) }) string {
	var b strings.Builder
	w := bufio.NewWriter(&b)
	f.Write(w)
	w.Flush()
	return b.String()
}

func TestCounterVec(t *testing.T) {
	c := promtext.NewCounterVec("requests_total", "Requests.\nAll of them.", "code", "method")
	c.Add(1, "200", "GET")
	c.Add(2, "200", "GET")
	c.Add(1, "404", "POST")
	assert.Equal(t, `# HELP requests_total Requests.\nAll of them.
# TYPE requests_total counter
requests_total{code="200",method="GET"} 3
requests_total{code="404",method="POST"} 1
`, write(c))
}

func TestHistogramVec(t *testing.T) {
	h := promtext.NewHistogramVec("latency_ms", "Latency.", []float64{1, 5, 10}, "route")
	for _, v := range []float64{0.5, 1, 3, 7, 50} {
		h.Observe(v, "a")
	}
	h.Observe(2, "b")
	assert.Equal(t, `# HELP latency_ms Latency.
# TYPE latency_ms histogram
latency_ms_bucket{le="1",route="a"} 2
latency_ms_bucket{le="5",route="a"} 3
latency_ms_bucket{le="10",route="a"} 4
latency_ms_bucket{le="+Inf",route="a"} 5
latency_ms_sum{route="a"} 61.5
latency_ms_count{route="a"} 5
latency_ms_bucket{le="1",route="b"} 0
latency_ms_bucket{le="5",route="b"} 1
latency_ms_bucket{le="10",route="b"} 1
latency_ms_bucket{le="+Inf",route="b"} 1
latency_ms_sum{route="b"} 2
latency_ms_count{route="b"} 1
`, write(h))
}
