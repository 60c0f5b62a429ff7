package opscheck

import (
	"reflect"
	"testing"
)

func TestMetricNames(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`max by (node) (dvm_node_role{role="on-hold"}) == 1`, []string{"dvm_node_role"}},
		{`histogram_quantile(0.9, sum by (le) (rate(dvm_recovery_duration_seconds_bucket[$__rate_interval]))) > 10`,
			[]string{"dvm_recovery_duration_seconds_bucket"}},
		{`max(dvm_generation) and max(changes(dvm_generation[10m])) > 0`, []string{"dvm_generation"}},
		{`count(max by (domain) (dvm_twin_protected) == 0) or vector(0)`, []string{"dvm_twin_protected"}},
		{`sum without (instance) (a_total{x="b c{"}) / on (node) group_left (os) b:rec offset 5m`, []string{"a_total", "b:rec"}},
		{`up{job="dvmd"} == 0 unless bool 1e3 + Inf + NaN`, []string{"up"}},
		{`sum(rate(x[5m:1m])) by (le)`, []string{"x"}},
		{"# a comment names no metric\nfoo", []string{"foo"}},
		{`{__name__="x"}`, []string{}},
	} {
		got, err := MetricNames(tc.expr)
		if err != nil {
			t.Errorf("%q: %v", tc.expr, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q: got %q, want %q", tc.expr, got, tc.want)
		}
	}
	for _, bad := range []string{`x{a="b}`, `rate(x[5m)`, `x{a="b"`} {
		if _, err := MetricNames(bad); err == nil {
			t.Errorf("%q: no error for an unterminated group", bad)
		}
	}
}
