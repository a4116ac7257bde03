package main

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/stack"
)

func TestResolveServers(t *testing.T) {
	lookup := fakeLookup(map[string][]string{
		"teredo.example": {"192.0.2.10", "192.0.2.11", "2001:db8::10"},
		"v6only.example": {"2001:db8::10"},
		"alias.example":  {"192.0.2.10"},
	})
	log := slog.New(slog.DiscardHandler)
	tests := []struct {
		hosts   []string
		want    []string
		names   map[string]string
		wantErr string
	}{
		{hosts: []string{"teredo.example"}, want: []string{"192.0.2.10"}, names: map[string]string{"192.0.2.10": "teredo.example"}},
		{hosts: []string{"198.51.100.1", "teredo.example", "alias.example"}, want: []string{"198.51.100.1", "192.0.2.10"}},
		{hosts: []string{"nxdomain.example", "teredo.example"}, want: []string{"192.0.2.10"}},
		{hosts: []string{"v6only.example", "2001:db8::1"}, wantErr: "cannot resolve Teredo server v6only.example, 2001:db8::1"},
		{hosts: []string{"nxdomain.example"}, wantErr: "-server"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.hosts, ","), func(t *testing.T) {
			l, err := resolveServers(context.Background(), lookup, tt.hosts, log)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, a := range l.addrs {
				got = append(got, a.String())
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for a, n := range tt.names {
				if l.names[netip.MustParseAddr(a)] != n {
					t.Errorf("name of %s = %q, want %q", a, l.names[netip.MustParseAddr(a)], n)
				}
			}
		})
	}
}

// TestRealStartNoAnswer checks the message a user gets when the server
// does not answer: it names the server and suggests -server.
func TestRealStartNoAnswer(t *testing.T) {
	// A UDP port on loopback that nobody listens on.
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	pc.Close()
	cfg := &Config{Servers: []string{"silent.example"}}
	r := realStart{
		cfg:       cfg,
		log:       slog.New(slog.DiscardHandler),
		lookup:    fakeLookup(map[string][]string{"silent.example": {"127.0.0.1"}}),
		perServer: 300 * time.Millisecond,
		tune: func(c *stack.Config) {
			c.ServerPort, c.IPv4Filter = port, proto.AnyIPv4
			c.LocalAddr = netip.MustParseAddrPort("127.0.0.1:0")
		},
	}
	_, err = r.start(context.Background(), func(stackEvent) {})
	if err == nil {
		t.Fatal("qualified with a server that does not exist")
	}
	for _, want := range []string{"Teredo server silent.example did not answer", "-server"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message lacks %q:\n%v", want, err)
		}
	}
}

// TestRealStartQualifies goes the production path (server given as an
// address, resolved, qualified) against a teredotest internet.
func TestRealStartQualifies(t *testing.T) {
	in := newDemoInternet(t)
	cfg := &Config{Servers: []string{in.ServerAddr().String()}}
	r := realStart{
		cfg:       cfg,
		log:       slog.New(slog.DiscardHandler),
		lookup:    fakeLookup(nil),
		perServer: qualifyTimeout,
		tune: func(c *stack.Config) {
			c.IPv4Filter, c.Secondary = in.IPv4Filter(), in.SecondaryAddr()
			c.LocalAddr = netip.MustParseAddrPort("127.0.0.1:0")
		},
	}
	events := make(chan stackEvent, 8)
	n, err := r.start(context.Background(), func(e stackEvent) { events <- e })
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	st := n.Status()
	a, ok := proto.ParseAddress(st.Addr)
	if st.State != "qualified" || !ok || a.Server != in.ServerAddr() || st.Server != in.ServerAddr() || st.MTU != 1280 {
		t.Fatalf("status %+v", st)
	}
	// The netstack's TCP counters are part of the status, for /metrics.
	for _, k := range []string{"tcp_segments_sent", "tcp_retransmits", "tcp_sack_recoveries", "tcp_segment_send_errors"} {
		if _, ok := st.Counters[k]; !ok {
			t.Errorf("status counters lack %q", k)
		}
	}
	if got := n.ServerName(in.ServerAddr()); got != in.ServerAddr().String() {
		t.Errorf("ServerName = %q", got)
	}
	// The NAT classification follows qualification (loopback: restricted).
	deadline := time.After(10 * time.Second)
	for st.NAT == "unknown" {
		select {
		case e := <-events:
			if e.Kind == evNAT {
				st.NAT = e.NAT
			}
		case <-deadline:
			st = n.Status()
			if st.NAT == "unknown" {
				t.Fatal("no NAT classification")
			}
		}
	}
	if st.NAT != "restricted" {
		t.Errorf("NAT %q, want restricted on loopback", st.NAT)
	}
}
