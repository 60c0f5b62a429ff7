package opscheck

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// root is the repository's top directory.
func root(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// tool finds a program the checks need. CI installs it (scripts/lib.sh DVM_PACKAGES), so
// there a missing one fails the test; elsewhere the test is skipped and says how to get it.
func tool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found: CI needs it (apt-get install %s; scripts/lib.sh DVM_PACKAGES lists it)", name, pkg)
	}
	t.Skipf("%s not found: apt-get install %s (CI runs this check)", name, pkg)
	return ""
}

func run(t *testing.T, dir, prog string, args ...string) string {
	t.Helper()
	cmd := exec.Command(prog, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s (in %s): %v\n%s", filepath.Base(prog), strings.Join(args, " "), dir, err, out)
	}
	return string(out)
}

func promDir(t *testing.T) string { return filepath.Join(root(t), "configs", "prometheus") }

func TestPromtoolCheckConfig(t *testing.T) {
	p := tool(t, "promtool", "prometheus")
	out := run(t, promDir(t), p, "check", "config", "prometheus.yml")
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool check config said no SUCCESS:\n%s", out)
	}
}

func TestPromtoolCheckRules(t *testing.T) {
	p := tool(t, "promtool", "prometheus")
	files, _ := filepath.Glob(filepath.Join(promDir(t), "rules", "*.yml"))
	if len(files) == 0 {
		t.Fatal("no rule files in configs/prometheus/rules")
	}
	for _, f := range files {
		out := run(t, promDir(t), p, "check", "rules", f)
		// The other checks read the rules with yamlKeys: it must see every rule promtool sees.
		if want := fmt.Sprintf("%d rules found", len(alertRulesIn(t, f))); !strings.Contains(out, want) {
			t.Fatalf("%s: yamlKeys read %s; promtool says:\n%s", f, want, out)
		}
	}
}

// TestPromtoolTestRules runs the rules' unit tests, and checks that every alert has a
// test where it fires and one where it stays quiet.
func TestPromtoolTestRules(t *testing.T) {
	p := tool(t, "promtool", "prometheus")
	files, _ := filepath.Glob(filepath.Join(promDir(t), "tests", "*.yml"))
	if len(files) == 0 {
		t.Fatal("no rule tests in configs/prometheus/tests")
	}
	run(t, promDir(t), p, append([]string{"test", "rules"}, files...)...)

	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, f := range files {
		alert := ""
		for _, kv := range yamlKeys(t, f) {
			switch kv.key {
			case "alertname":
				alert = kv.value
			case "exp_alerts":
				if kv.value == "[]" {
					quiet[alert] = true
				} else {
					fires[alert] = true
				}
			}
		}
	}
	for _, r := range alertRules(t) {
		if !fires[r.Alert] {
			t.Errorf("alert %s has no test where it fires", r.Alert)
		}
		if !quiet[r.Alert] {
			t.Errorf("alert %s has no test where it stays quiet", r.Alert)
		}
		if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
			t.Errorf("alert %s lacks a summary or description annotation", r.Alert)
		}
	}
}

type alertRule struct {
	Alert       string
	Expr        string
	Annotations map[string]string
}

// keyValue is one `key: value` of a YAML file, in file order; a block scalar (`>-`, `|`)
// is joined into value.
type keyValue struct{ key, value string }

// yamlKeys reads the keys of a YAML file of the shape promtool's rule and test files have,
// enough for the checks here (module go.mod carries no YAML library): `key: value` lines,
// list items `- key: value`, plain, quoted and block scalars.
func yamlKeys(t *testing.T, path string) []keyValue {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	indent := func(l string) int { return len(l) - len(strings.TrimLeft(l, " -")) }
	var out []keyValue
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		text := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "- "))
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		key, val, ok := strings.Cut(text, ":")
		if !ok || strings.ContainsAny(key, " \"'{") {
			continue
		}
		val = strings.TrimSpace(val)
		if strings.HasPrefix(val, ">") || strings.HasPrefix(val, "|") {
			sep := " "
			if val[0] == '|' {
				sep = "\n"
			}
			var parts []string
			for i+1 < len(lines) && (strings.TrimSpace(lines[i+1]) == "" || indent(lines[i+1]) > indent(l)) {
				i++
				if p := strings.TrimSpace(lines[i]); p != "" {
					parts = append(parts, p)
				}
			}
			val = strings.Join(parts, sep)
		} else if len(val) >= 2 && (val[0] == '"' || val[0] == '\'') && val[len(val)-1] == val[0] {
			val = val[1 : len(val)-1]
		}
		out = append(out, keyValue{key, val})
	}
	return out
}

// alertRules reads every alert rule of configs/prometheus/rules.
func alertRules(t *testing.T) []alertRule {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(promDir(t), "rules", "*.yml"))
	var all []alertRule
	for _, f := range files {
		all = append(all, alertRulesIn(t, f)...)
	}
	if len(all) == 0 {
		t.Fatal("no alert rules in configs/prometheus/rules")
	}
	return all
}

// alertRulesIn reads the alert rules of one file.
func alertRulesIn(t *testing.T, f string) []alertRule {
	t.Helper()
	var all []alertRule
	for _, kv := range yamlKeys(t, f) {
		switch kv.key {
		case "alert":
			all = append(all, alertRule{Alert: kv.value, Annotations: map[string]string{}})
		case "expr":
			if len(all) > 0 {
				all[len(all)-1].Expr = kv.value
			}
		case "summary", "description":
			if len(all) > 0 {
				all[len(all)-1].Annotations[kv.key] = kv.value
			}
		}
	}
	for _, r := range all {
		if r.Expr == "" {
			t.Fatalf("alert %s: no expr found", r.Alert)
		}
	}
	return all
}

// dashboard is the part of a Grafana dashboard the checks read.
type dashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query string `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type panel struct {
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's panels
}

func dashboards(t *testing.T) map[string]dashboard {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(root(t), "configs", "grafana", "*.json"))
	if len(files) == 0 {
		t.Fatal("no dashboards in configs/grafana")
	}
	out := map[string]dashboard{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d dashboard
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[filepath.Base(f)] = d
	}
	return out
}

func (d dashboard) panels() []panel {
	var out []panel
	for _, p := range d.Panels {
		out = append(out, p)
		out = append(out, p.Panels...)
	}
	return out
}

// dashboardExprs returns every query of every dashboard, named by file and panel.
func dashboardExprs(t *testing.T) map[string]string {
	out := map[string]string{}
	for f, d := range dashboards(t) {
		for _, p := range d.panels() {
			for i, tg := range p.Targets {
				out[fmt.Sprintf("%s: panel %q query %d", f, p.Title, i+1)] = tg.Expr
			}
		}
	}
	return out
}

// TestDashboardImportable: what Grafana's import needs to take the file as it is, with
// no question but which Prometheus to use, and the rows the issue asks for.
func TestDashboardImportable(t *testing.T) {
	for f, d := range dashboards(t) {
		if d.UID == "" || d.Title == "" {
			t.Errorf("%s: uid and title are required for a stable import", f)
		}
		ds := false
		for _, v := range d.Templating.List {
			if v.Name == "datasource" && v.Type == "datasource" && v.Query == "prometheus" {
				ds = true
			}
		}
		if !ds {
			t.Errorf("%s: no datasource variable of type datasource for prometheus", f)
		}
		rows := map[string]bool{}
		for _, p := range d.panels() {
			if p.Type == "row" {
				rows[p.Title] = true
				continue
			}
			if len(p.Targets) > 0 && (p.Datasource == nil || p.Datasource.UID != "${datasource}") {
				t.Errorf("%s: panel %q does not use the ${datasource} variable", f, p.Title)
			}
			for i, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("%s: panel %q query %d is empty", f, p.Title, i+1)
				}
			}
		}
		if f == "dvm.json" {
			for _, r := range []string{"Cluster", "Guests", "Failover", "Migrations"} {
				if !rows[r] {
					t.Errorf("%s: no row %q", f, r)
				}
			}
		}
	}
}

// TestDashboardQueriesParse has promtool parse every dashboard query, as recording rules
// ($__rate_interval as 1m, which is what Grafana puts there at a 15 s scrape).
func TestDashboardQueriesParse(t *testing.T) {
	p := tool(t, "promtool", "prometheus")
	exprs := dashboardExprs(t)
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	n := 0
	for name, e := range exprs {
		q, _ := json.Marshal(strings.ReplaceAll(e, "$__rate_interval", "1m")) // a JSON string is a YAML string
		fmt.Fprintf(&b, "      - record: dashboard:query:%d\n        expr: %s\n", n, q)
		n++
		t.Logf("%s: %s", name, e)
	}
	f := filepath.Join(t.TempDir(), "dashboard.rules.yml")
	if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out := run(t, root(t), p, "check", "rules", f)
	if !strings.Contains(out, fmt.Sprintf("%d rules found", n)) {
		t.Fatalf("promtool did not take all %d dashboard queries:\n%s", n, out)
	}
}
