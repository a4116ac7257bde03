package server

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestDropCountsJSON(t *testing.T) {
	var all DropCounts
	for r := DropReason(1); r < NumDropReasons; r++ {
		all[r] = uint64(r) * 1000
	}
	all[DropRateLimited] = 1<<64 - 1
	var one DropCounts
	one[DropMalformed] = 7

	tests := []struct {
		name string
		in   string
		want DropCounts
		// wantErr is a substring of the error; "" means success.
		wantErr string
	}{
		{"empty object", `{}`, DropCounts{}, ""},
		{"one reason, others absent", `{"malformed":7}`, one, ""},
		{"whitespace", " {\n\t\"malformed\" : 7 }\r\n", one, ""},
		{"zero counts", `{"malformed":7,"loop":0,"send_error":0}`, one, ""},
		{"unknown reason ignored", `{"malformed":7,"from_the_future":3}`, one, ""},
		{"unknown reason of another type ignored", `{"malformed":7,"from_the_future":{"a":[1.5,"x"]}}`, one, ""},
		{"none ignored", `{"none":5,"malformed":7}`, one, ""},
		{"names are case-sensitive", `{"Malformed":3,"malformed":7}`, one, ""},
		{"duplicate key: last wins", `{"malformed":1,"malformed":7}`, one, ""},
		{"largest count", `{"rate_limited":18446744073709551615}`, DropCounts{DropRateLimited: 1<<64 - 1}, ""},
		{"null", `null`, DropCounts{}, ""},

		{"not JSON", `{malformed:1}`, DropCounts{}, "invalid character"},
		{"truncated", `{"malformed":1`, DropCounts{}, "unexpected end"},
		{"empty input", ``, DropCounts{}, "unexpected end"},
		{"array", `[1,2,3]`, DropCounts{}, "cannot unmarshal array"},
		{"string", `"malformed"`, DropCounts{}, "cannot unmarshal string"},
		{"number", `7`, DropCounts{}, "cannot unmarshal number"},
		{"negative count", `{"malformed":-1}`, DropCounts{}, `drop count "malformed": json: cannot unmarshal number -1`},
		{"fractional count", `{"malformed":1.5}`, DropCounts{}, "cannot unmarshal number 1.5"},
		{"exponent", `{"malformed":1e3}`, DropCounts{}, "cannot unmarshal number 1e3"},
		{"count too large", `{"malformed":18446744073709551616}`, DropCounts{}, "cannot unmarshal number"},
		{"count as string", `{"malformed":"7"}`, DropCounts{}, "cannot unmarshal string"},
		{"null count", `{"malformed":null}`, DropCounts{}, ""},
		{"trailing data", `{"malformed":7} {}`, DropCounts{}, "invalid character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got DropCounts
			err := got.UnmarshalJSON([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "server: ") {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %v, %v; want %v", got, err, tt.want)
			}
		})
	}

	t.Run("round trip", func(t *testing.T) {
		for _, d := range []DropCounts{{}, one, all} {
			b, err := json.Marshal(d)
			if err != nil {
				t.Fatal(err)
			}
			var got DropCounts
			if err := json.Unmarshal(b, &got); err != nil || got != d {
				t.Fatalf("%s: got %v, %v; want %v", b, got, err, d)
			}
		}
	})

	t.Run("replaces what was there", func(t *testing.T) {
		got := all
		if err := json.Unmarshal([]byte(`{"malformed":7}`), &got); err != nil || got != one {
			t.Fatalf("got %v, %v; want %v", got, err, one)
		}
	})

	t.Run("unchanged on error", func(t *testing.T) {
		got := all
		if err := json.Unmarshal([]byte(`{"loop":1,"malformed":-1}`), &got); err == nil || got != all {
			t.Fatalf("got %v, %v; want %v and an error", got, err, all)
		}
	})

	t.Run("null leaves it alone", func(t *testing.T) {
		got := all
		if err := json.Unmarshal([]byte(`null`), &got); err != nil || got != all {
			t.Fatalf("got %v, %v; want %v", got, err, all)
		}
	})

	t.Run("NotDropped is not encoded", func(t *testing.T) {
		d := one
		d[NotDropped] = 9
		b, _ := json.Marshal(d)
		var got DropCounts
		if err := json.Unmarshal(b, &got); err != nil || got != one {
			t.Fatalf("%s: got %v, %v; want %v", b, got, err, one)
		}
	})
}

// TestStatusJSONRoundTrip checks that a Go client can decode /status into
// Status (all but the typed Stats, which /status carries as maps).
func TestStatusJSONRoundTrip(t *testing.T) {
	p, err := NewProcessor(Config{Primary: netip.MustParseAddr("198.18.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	p.Process(Primary, []byte("junk"), netip.MustParseAddrPort("203.0.113.5:40000"), nil)
	want := p.Status()
	want.Stats = Stats{}
	b, err := json.MarshalIndent(want, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	var got Status
	if err := json.Unmarshal(b, &got); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, %v\nwant %+v\nfrom %s", got, err, want, b)
	}
	if got.Drops["malformed"] != 1 || got.Counters["rx_received"] != 1 || got.State != "running" {
		t.Errorf("status %s", b)
	}
}
