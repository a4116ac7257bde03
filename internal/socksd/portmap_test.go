package socksd

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/teredo-go/teredo/portmap"
	"github.com/teredo-go/teredo/stack"
)

func TestPortMapJSON(t *testing.T) {
	if portMapJSONOf(nil) != nil {
		t.Fatal("port mapping off must leave portmap out of /status")
	}
	st := &stack.PortMapStatus{InAddress: true}
	st.Mapping = portmap.Mapping{Protocol: portmap.PCP, External: netip.MustParseAddrPort("198.18.0.12:3544"), Lifetime: time.Hour}
	st.Expires = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	st.Renewals = 2
	st.LastError = "renew pcp: timeout"
	st.Attempts = []portmap.Attempt{{Protocol: portmap.PCP}}
	src := testStatusSource()
	inner := src.teredo
	src.teredo = func() TeredoStatus {
		t := inner()
		t.PortMap = portMapJSONOf(st)
		return t
	}
	b, err := json.Marshal(src.snapshot())
	if err != nil {
		t.Fatal(err)
	}
	want := `"portmap":{"protocol":"pcp","external":"198.18.0.12:3544","lifetime_seconds":3600,"expires":"2026-01-02T03:04:05Z","in_address":true,"renewals":2,"last_error":"renew pcp: timeout","tried":{"pcp":"ok"}}`
	if !strings.Contains(string(b), want) {
		t.Fatalf("status JSON\n%s\nlacks\n%s", b, want)
	}
}
