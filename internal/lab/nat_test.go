package lab

import (
	"net/netip"
	"testing"
)

func TestParseConntrack(t *testing.T) {
	out := `udp      17 29 src=192.168.1.2 dst=198.18.0.2 sport=40000 dport=3544 [UNREPLIED] src=198.18.0.2 dst=198.18.0.10 sport=3544 dport=1234 mark=0 use=1
udp      17 117 src=192.168.1.2 dst=198.18.0.3 sport=40000 dport=3544 packets=3 bytes=300 src=198.18.0.3 dst=198.18.0.10 sport=3544 dport=40000 packets=2 bytes=200 [ASSURED] mark=0 use=1
conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown.
`
	flows, err := parseConntrack(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) != 2 {
		t.Fatalf("got %d flows, want 2", len(flows))
	}
	tests := []struct {
		f                  Flow
		origSrc, mapped    string
		flag               string
		origPkts, replyPkt uint64
	}{
		{flows[0], "192.168.1.2:40000", "198.18.0.10:1234", "UNREPLIED", 0, 0},
		{flows[1], "192.168.1.2:40000", "198.18.0.10:40000", "ASSURED", 3, 2},
	}
	for i, tc := range tests {
		if tc.f.Orig.Src != netip.MustParseAddrPort(tc.origSrc) || tc.f.Mapped() != netip.MustParseAddrPort(tc.mapped) {
			t.Errorf("flow %d: %+v, want orig src %s mapped %s", i, tc.f, tc.origSrc, tc.mapped)
		}
		if len(tc.f.Flags) != 1 || tc.f.Flags[0] != tc.flag {
			t.Errorf("flow %d: flags %v, want [%s]", i, tc.f.Flags, tc.flag)
		}
		if tc.f.OrigPackets != tc.origPkts || tc.f.ReplyPackets != tc.replyPkt {
			t.Errorf("flow %d: packets %d/%d, want %d/%d", i, tc.f.OrigPackets, tc.f.ReplyPackets, tc.origPkts, tc.replyPkt)
		}
	}
	for _, bad := range []string{
		"udp 17 29 src=192.168.1.2 dst=198.18.0.2 sport=40000 dport=3544\n",
		"udp 17 29 src=nonsense dst=198.18.0.2 sport=1 dport=2 src=1.2.3.4 dst=1.2.3.5 sport=3 dport=4\n",
		"udp 17 29 src=1.2.3.4 dst=198.18.0.2 sport=99999 dport=2 src=1.2.3.4 dst=1.2.3.5 sport=3 dport=4\n",
	} {
		if _, err := parseConntrack(bad); err == nil {
			t.Errorf("parseConntrack(%q) accepted malformed input", bad)
		}
	}
}

func FuzzParseConntrack(f *testing.F) {
	f.Add("udp 17 29 src=192.168.1.2 dst=198.18.0.2 sport=40000 dport=3544 src=198.18.0.2 dst=198.18.0.10 sport=3544 dport=1234 mark=0 use=1\n")
	f.Add("udp 17 29 src=::1 dst=::1 sport=1 dport=2 packets=1 src=::1 dst=::1 sport=2 dport=1 packets=x\n")
	f.Fuzz(func(t *testing.T, s string) {
		flows, err := parseConntrack(s)
		if err != nil {
			return
		}
		for _, fl := range flows {
			if !fl.Orig.Src.IsValid() || !fl.Reply.Dst.IsValid() {
				t.Fatalf("parsed an invalid flow %+v from %q", fl, s)
			}
		}
	})
}

func TestParseCounter(t *testing.T) {
	out := "table inet labcount {\n\tcounter lab_answers {\n\t\tpackets 12 bytes 720\n\t}\n}\n"
	if n, err := parseCounter(out); err != nil || n != 12 {
		t.Errorf("parseCounter = %d, %v; want 12", n, err)
	}
	for _, bad := range []string{"", "packets", "packets x bytes 1"} {
		if _, err := parseCounter(bad); err == nil {
			t.Errorf("parseCounter(%q) accepted malformed input", bad)
		}
	}
}

func TestParseUDPStats(t *testing.T) {
	out := "Ip: Forwarding DefaultTTL\nIp: 2 64\n" +
		"Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\nUdp: 7 1 2 9 0\n" +
		"UdpLite: InDatagrams NoPorts\nUdpLite: 0 0\n"
	got, err := parseUDPStats(out)
	if err != nil {
		t.Fatal(err)
	}
	if want := (UDPStats{InDatagrams: 7, NoPorts: 1, InErrors: 2, OutDatagrams: 9}); got != want {
		t.Errorf("parseUDPStats = %+v, want %+v", got, want)
	}
	for _, bad := range []string{"", "Udp: InDatagrams\n", "Udp: InDatagrams\nUdp: x\n", "Udp: A B\nUdp: 1\n"} {
		if _, err := parseUDPStats(bad); err == nil {
			t.Errorf("parseUDPStats(%q) accepted malformed input", bad)
		}
	}
}
