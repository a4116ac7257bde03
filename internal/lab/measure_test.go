package lab

import "testing"

func TestParseMemory(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Memory
		ok   bool
	}{
		{"Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n", Memory{RSS: 1 << 20, PeakRSS: 2 << 20}, true},
		{"VmRSS:\t  1024 kB\n", Memory{}, false},
		{"VmHWM:\t  x kB\nVmRSS:\t  1 kB\n", Memory{}, false},
		{"VmHWM:\t  1 MB\nVmRSS:\t  1 kB\n", Memory{}, false},
	} {
		got, err := parseMemory(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseMemory(%q) = %+v, %v; want %+v, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestParseUploadAnswer(t *testing.T) {
	const sum = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	for _, tc := range []struct {
		in   string
		want Digest
		ok   bool
	}{
		{"0 " + sum + "\n", Digest{0, sum}, true},
		{"12 " + sum[:10] + "\n", Digest{}, false},
		{"Method Not Allowed\n", Digest{}, false},
		{"", Digest{}, false},
	} {
		got, err := parseUploadAnswer(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseUploadAnswer(%q) = %+v, %v; want %+v, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}
