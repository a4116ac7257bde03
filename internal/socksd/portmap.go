package socksd

import (
	"time"

	"github.com/teredo-go/teredo/stack"
)

// portMapJSON is the "portmap" object of /status: the mapping the NAT
// granted (empty protocol when none), what each protocol answered, and
// whether the Teredo address carries the mapping.
type portMapJSON struct {
	Protocol  string            `json:"protocol"`
	External  string            `json:"external"`
	Lifetime  float64           `json:"lifetime_seconds"`
	Expires   string            `json:"expires,omitempty"` // RFC 3339
	InAddress bool              `json:"in_address"`
	ServerSaw string            `json:"server_saw,omitempty"` // the endpoint the server reported
	Renewals  uint64            `json:"renewals"`
	LastError string            `json:"last_error,omitempty"`
	Tried     map[string]string `json:"tried"` // protocol → "ok" or the error
}

func portMapJSONOf(st *stack.PortMapStatus) *portMapJSON {
	if st == nil {
		return nil
	}
	out := &portMapJSON{
		Protocol:  string(st.Mapping.Protocol),
		External:  addrString(st.Mapping.External),
		Lifetime:  st.Mapping.Lifetime.Seconds(),
		InAddress: st.InAddress,
		ServerSaw: addrString(st.ServerSaw),
		Renewals:  st.Renewals,
		LastError: st.LastError,
		Tried:     map[string]string{},
	}
	if !st.Expires.IsZero() && st.Mapping.External.IsValid() {
		out.Expires = st.Expires.UTC().Format(time.RFC3339)
	}
	for _, a := range st.Attempts {
		v := "ok"
		if a.Err != "" {
			v = a.Err
		}
		out.Tried[string(a.Protocol)] = v
	}
	return out
}
