package metrics

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// Problem is a defect Lint found, with the line it is on (1-based; 0 for
// a family as a whole).
type Problem struct {
	Line int
	Text string
}

func (p Problem) String() string { return fmt.Sprintf("line %d: %s", p.Line, p.Text) }

// Lint parses text exposition format and applies the rules of promtool's
// "check metrics" (client_golang's promlint) that matter for the counters
// and gauges this package writes, plus the parser's own rules: every
// family has HELP and TYPE before its samples, names are snake_case
// without colons, counters end in _total and nothing else does, no
// reserved suffix (_count, _sum, _bucket), no type or non-base unit in the
// name, label values are quoted and escaped, values are numbers, and no
// series appears twice. It returns the problems in input order.
func Lint(r io.Reader) ([]Problem, error) {
	type family struct {
		help, typ bool
		typeName  string
		samples   int
	}
	var (
		probs    []Problem
		families = map[string]*family{}
		order    []string
		series   = map[string]int{}
		lineNo   int
		last     string // family of the previous line, to find split families
		closed   = map[string]bool{}
	)
	add := func(line int, format string, args ...any) {
		probs = append(probs, Problem{line, fmt.Sprintf(format, args...)})
	}
	get := func(name string) *family {
		f, ok := families[name]
		if !ok {
			f = &family{}
			families[name] = f
			order = append(order, name)
		}
		return f
	}
	enter := func(name string) {
		if name != last {
			if last != "" {
				closed[last] = true
			}
			if closed[name] {
				add(lineNo, "family %s is split: its lines are not together", name)
			}
			last = name
		}
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		lineNo++
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		if rest, ok := strings.CutPrefix(line, "#"); ok {
			fields := strings.SplitN(strings.TrimLeft(rest, " "), " ", 3)
			if len(fields) < 2 || fields[0] != "HELP" && fields[0] != "TYPE" {
				continue // an ordinary comment
			}
			name := fields[1]
			enter(name)
			f := get(name)
			if f.samples > 0 {
				add(lineNo, "%s %s after its samples", fields[0], name)
			}
			arg := ""
			if len(fields) == 3 {
				arg = fields[2]
			}
			switch fields[0] {
			case "HELP":
				if f.help {
					add(lineNo, "second HELP for %s", name)
				}
				f.help = true
				if strings.TrimSpace(arg) == "" {
					add(lineNo, "%s has no help text", name)
				}
			case "TYPE":
				if f.typ {
					add(lineNo, "second TYPE for %s", name)
				}
				f.typ = true
				switch arg {
				case "counter", "gauge", "untyped":
				case "histogram", "summary":
					add(lineNo, "%s: %s is a type this linter does not check", name, arg)
				default:
					add(lineNo, "%s: unknown type %q", name, arg)
				}
				f.typeName = arg
			}
			continue
		}
		name, labels, value, err := parseSample(line)
		if err != nil {
			add(lineNo, "%v", err)
			continue
		}
		enter(name)
		f := get(name)
		f.samples++
		if !f.typ {
			add(lineNo, "sample of %s before (or without) its TYPE", name)
		}
		if _, err := strconv.ParseFloat(value, 64); err != nil && value != "+Inf" && value != "-Inf" && value != "NaN" {
			add(lineNo, "%s: value %q is not a number", name, value)
		}
		seen := map[string]bool{}
		var keys []string
		for _, l := range labels {
			if !validName(l[0], false) || strings.HasPrefix(l[0], "__") {
				add(lineNo, "%s: invalid label name %q", name, l[0])
			}
			if seen[l[0]] {
				add(lineNo, "%s: label %q given twice", name, l[0])
			}
			seen[l[0]] = true
			if l[0] != strings.ToLower(l[0]) {
				add(lineNo, "%s: label name %q should be snake_case", name, l[0])
			}
			keys = append(keys, l[0]+"="+strconv.Quote(l[1]))
		}
		slices.Sort(keys)
		id := name + "{" + strings.Join(keys, ",") + "}"
		if first, dup := series[id]; dup {
			add(lineNo, "duplicate series %s (first on line %d)", id, first)
		} else {
			series[id] = lineNo
		}
	}
	if err := sc.Err(); err != nil {
		return probs, err
	}
	for _, name := range order {
		f := families[name]
		if !f.help {
			add(0, "%s has no HELP", name)
		}
		if !f.typ {
			add(0, "%s has no TYPE", name)
		}
		for _, p := range lintName(name, f.typeName) {
			add(0, "%s", p)
		}
	}
	return probs, nil
}

// nonBaseUnits are the units promlint asks to replace by the base unit.
var nonBaseUnits = map[string]string{
	"milliseconds": "seconds", "microseconds": "seconds", "nanoseconds": "seconds",
	"minutes": "seconds", "hours": "seconds", "days": "seconds", "weeks": "seconds",
	"kilobytes": "bytes", "megabytes": "bytes", "gigabytes": "bytes",
	"kibibytes": "bytes", "mebibytes": "bytes", "gibibytes": "bytes",
	"bits": "bytes", "percent": "ratio", "celsius": "celsius (base unit), not a prefix",
}

// abbreviations are unit abbreviations promlint rejects.
var abbreviations = []string{"s", "ms", "us", "ns", "sec", "secs", "min", "mins", "hr", "hrs", "b", "kb", "mb", "gb", "pct"}

// lintName applies promlint's rules on a family name.
func lintName(name, typ string) []string {
	var p []string
	if !validName(name, true) {
		return []string{fmt.Sprintf("%s: invalid metric name", name)}
	}
	if strings.Contains(name, ":") {
		p = append(p, fmt.Sprintf("%s: colons are reserved for recording rules", name))
	}
	if name != strings.ToLower(name) {
		p = append(p, fmt.Sprintf("%s: metric names should be snake_case, not camelCase", name))
	}
	total := strings.HasSuffix(name, "_total")
	switch {
	case typ == "counter" && !total:
		p = append(p, fmt.Sprintf("%s: counter metrics should have a _total suffix", name))
	case typ != "counter" && total:
		p = append(p, fmt.Sprintf("%s: non-counter metrics should not have a _total suffix", name))
	}
	for _, s := range []string{"_count", "_sum", "_bucket"} {
		if strings.HasSuffix(name, s) {
			p = append(p, fmt.Sprintf("%s: the %s suffix is reserved for histograms and summaries", name, s))
		}
	}
	parts := strings.Split(name, "_")
	for _, w := range parts {
		switch w {
		case "counter", "gauge", "histogram", "summary", "untyped":
			p = append(p, fmt.Sprintf("%s: metric names should not contain the metric type %q", name, w))
		}
		if base, ok := nonBaseUnits[w]; ok {
			p = append(p, fmt.Sprintf("%s: use base unit %s instead of %s", name, base, w))
		}
		if slices.Contains(abbreviations, w) && w != parts[0] {
			p = append(p, fmt.Sprintf("%s: metric names should not contain abbreviated units (%q)", name, w))
		}
	}
	return p
}

// parseSample splits a sample line into name, labels and value.
func parseSample(line string) (name string, labels [][2]string, value string, err error) {
	i := strings.IndexAny(line, "{ ")
	if i < 0 {
		return "", nil, "", fmt.Errorf("sample %q has no value", line)
	}
	name, rest := line[:i], line[i:]
	if !validName(name, true) {
		return "", nil, "", fmt.Errorf("invalid metric name %q", name)
	}
	if rest[0] == '{' {
		rest = rest[1:]
		for {
			rest = strings.TrimLeft(rest, " ")
			if strings.HasPrefix(rest, "}") {
				rest = rest[1:]
				break
			}
			eq := strings.IndexByte(rest, '=')
			if eq < 0 || len(rest) < eq+2 || rest[eq+1] != '"' {
				return "", nil, "", fmt.Errorf("%s: malformed labels", name)
			}
			lname := strings.TrimSpace(rest[:eq])
			rest = rest[eq+2:]
			var val strings.Builder
			j := 0
			for ; j < len(rest) && rest[j] != '"'; j++ {
				if rest[j] == '\\' {
					j++
					if j == len(rest) {
						break
					}
					switch rest[j] {
					case '\\', '"':
						val.WriteByte(rest[j])
					case 'n':
						val.WriteByte('\n')
					default:
						return "", nil, "", fmt.Errorf("%s: label %s: invalid escape \\%c", name, lname, rest[j])
					}
					continue
				}
				val.WriteByte(rest[j])
			}
			if j >= len(rest) {
				return "", nil, "", fmt.Errorf("%s: label %s: unterminated value", name, lname)
			}
			labels = append(labels, [2]string{lname, val.String()})
			rest = strings.TrimLeft(rest[j+1:], " ")
			if strings.HasPrefix(rest, ",") {
				rest = rest[1:]
			} else if !strings.HasPrefix(rest, "}") {
				return "", nil, "", fmt.Errorf("%s: malformed labels after %s", name, lname)
			}
		}
	}
	fields := strings.Fields(rest)
	if len(fields) < 1 || len(fields) > 2 {
		return "", nil, "", fmt.Errorf("%s: want a value and an optional timestamp, got %q", name, rest)
	}
	return name, labels, fields[0], nil
}
