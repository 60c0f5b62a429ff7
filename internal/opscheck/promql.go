// Package opscheck checks what operators run around dvm against dvm itself: the
// Prometheus scrape config, alert rules and their unit tests (with promtool), the Grafana
// dashboard (every metric name in every query must be in a real scrape of dvmd), and the
// Vagrantfile (vagrant validate). It is tests, plus MetricNames, which they share.
package opscheck

import (
	"fmt"
	"sort"
	"strings"
)

// Words of PromQL that are neither functions called with parentheses nor metric names.
var (
	// grouping keywords are followed by a parenthesized list of label names.
	grouping = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}
	// aggregators may be followed by a grouping clause before their parentheses.
	aggregators = map[string]bool{"sum": true, "min": true, "max": true, "avg": true, "count": true, "stddev": true, "stdvar": true,
		"topk": true, "bottomk": true, "quantile": true, "count_values": true, "group": true, "limitk": true, "limit_ratio": true}
	operators = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true, "atan2": true,
		"inf": true, "nan": true}
)

// MetricNames returns the metric names a PromQL expression selects, sorted and without
// repeats: identifiers that are not functions, aggregators, keywords, label names in
// matchers or grouping clauses, strings, numbers, durations or Grafana variables
// ($__rate_interval). It is a lexer, not a parser: promtool checks the syntax; this
// only finds what the expression reads. An unterminated string, brace or bracket is an
// error.
func MetricNames(expr string) ([]string, error) {
	seen := map[string]bool{}
	i := 0
	for i < len(expr) {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			end, err := skipString(expr, i)
			if err != nil {
				return nil, err
			}
			i = end
		case c == '{':
			end, err := skipTo(expr, i, '}')
			if err != nil {
				return nil, err
			}
			i = end
		case c == '[':
			end, err := skipTo(expr, i, ']')
			if err != nil {
				return nil, err
			}
			i = end
		case c == '#':
			for i < len(expr) && expr[i] != '\n' {
				i++
			}
		case c == '$':
			i++
			for i < len(expr) && (isIdent(expr[i]) || expr[i] == '{' || expr[i] == '}') {
				i++
			}
		case c >= '0' && c <= '9' || c == '.':
			for i < len(expr) && (isIdent(expr[i]) || expr[i] == '.' || ((expr[i] == '+' || expr[i] == '-') && (expr[i-1] == 'e' || expr[i-1] == 'E'))) {
				i++
			}
		case isIdentStart(c):
			start := i
			for i < len(expr) && isIdent(expr[i]) {
				i++
			}
			word := expr[start:i]
			j := skipSpace(expr, i)
			lower := strings.ToLower(word)
			switch {
			case grouping[lower]:
				if j < len(expr) && expr[j] == '(' {
					end, err := skipTo(expr, j, ')')
					if err != nil {
						return nil, err
					}
					i = end
				}
			case operators[lower], aggregators[lower]:
			case j < len(expr) && expr[j] == '(':
				// a function call
			default:
				seen[word] = true
			}
		default:
			i++
		}
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}

func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func isIdent(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }

func skipSpace(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string literal that starts at i.
func skipString(s string, i int) (int, error) {
	q := s[i]
	for j := i + 1; j < len(s); j++ {
		if s[j] == '\\' && q != '`' {
			j++
			continue
		}
		if s[j] == q {
			return j + 1, nil
		}
	}
	return 0, fmt.Errorf("unterminated string at offset %d in %q", i, s)
}

// skipTo returns the index after the close that ends the group opened at i, skipping
// strings inside it.
func skipTo(s string, i int, close byte) (int, error) {
	open := s[i]
	depth := 0
	for j := i; j < len(s); j++ {
		switch s[j] {
		case '"', '\'', '`':
			end, err := skipString(s, j)
			if err != nil {
				return 0, err
			}
			j = end - 1
		case open:
			depth++
		case close:
			depth--
			if depth == 0 {
				return j + 1, nil
			}
		}
	}
	return 0, fmt.Errorf("unclosed %q at offset %d in %q", open, i, s)
}
