package metrics

import (
	"runtime/debug"
	"strings"
)

// Kind is the family a role's counter belongs to. Every role (client,
// server, relay) writes the same families, so that one dashboard reads
// them all:
//
//	teredo_<role>_packets_total{direction,result}
//	teredo_<role>_dropped_total{reason}
//	teredo_<role>_peer_events_total{event}
type Kind uint8

const (
	// Packets counts packets by direction and what became of them.
	Packets Kind = iota
	// Dropped counts discarded packets by reason.
	Dropped
	// PeerEvents counts changes of peer state that are not packets (a peer
	// accepted behind a symmetric NAT, one given up), so that packet sums
	// stay sums of packets.
	PeerEvents
)

// Directions of a Packets counter, seen from the role's Teredo (UDP/IPv4)
// side: RX arrived from it, TX was sent (or was to be sent) towards it.
const (
	RX = "rx"
	TX = "tx"
)

// Key describes one counter of a role's enum: a role declares an array of
// Keys indexed by its counter enum, and this package derives both the
// /status maps and the metric series from it.
type Key struct {
	Kind      Kind
	Direction string // RX or TX, for Packets only
	// Name is the result (Packets), the reason (Dropped) or the event
	// (PeerEvents) label value, in snake_case.
	Name string
}

// StatusKey is the counter's key in /status JSON: direction_result for
// packets ("rx_forwarded"), peer_event for peer events, the reason for
// drops (which go in a map of their own).
func (k Key) StatusKey() string {
	switch k.Kind {
	case Packets:
		return k.Direction + "_" + k.Name
	case PeerEvents:
		return "peer_" + k.Name
	}
	return k.Name
}

// StatusMaps returns the "counters" and "drops" objects of /status for
// the counters keys describes; value returns the counter at an index of
// keys. Both maps are non-nil and hold every key, zero or not, so that a
// reader can tell "never happened" from "not counted by this version".
func StatusMaps(keys []Key, value func(i int) uint64) (counters, drops map[string]uint64) {
	counters, drops = map[string]uint64{}, map[string]uint64{}
	for i, k := range keys {
		if k.Kind == Dropped {
			drops[k.StatusKey()] += value(i)
		} else {
			counters[k.StatusKey()] += value(i)
		}
	}
	return counters, drops
}

// Role writes the families of Kind for role ("client", "server",
// "relay") from the counters keys describes, in the order Kind lists
// them. Families without a counter are left out.
func (w *Writer) Role(role string, keys []Key, value func(i int) uint64) {
	families := [...]struct {
		suffix, help, label string
	}{
		Packets:    {"packets_total", "Packets, by direction (rx: from the Teredo side; tx: towards it) and result.", "result"},
		Dropped:    {"dropped_total", "Packets dropped, by reason.", "reason"},
		PeerEvents: {"peer_events_total", "Peer state changes, by event.", "event"},
	}
	for kind, f := range families {
		name := "teredo_" + role + "_" + f.suffix
		header := false
		for i, k := range keys {
			if int(k.Kind) != kind {
				continue
			}
			if !header {
				w.Header(name, f.help, Counter)
				header = true
			}
			if k.Kind == Packets {
				w.Sample(name, float64(value(i)), "direction", k.Direction, f.label, k.Name)
			} else {
				w.Sample(name, float64(value(i)), f.label, k.Name)
			}
		}
	}
}

// ModulePath is the module whose version Build reports.
const ModulePath = "github.com/teredo-go/teredo"

// BuildInfo says which code is running.
type BuildInfo struct {
	// Version is the module version ("v1.2.3", a pseudo-version, or
	// "(devel)" for a build inside the module's own checkout).
	Version string `json:"version"`
	// Revision is the VCS commit the binary was built from, with
	// "-dirty" when the tree had changes; empty if unknown (go install
	// of a module version records none).
	Revision  string `json:"revision,omitempty"`
	GoVersion string `json:"go_version"`
}

// Build reads the running binary's build information: the version of
// this module whether it is the main module (a command) or a dependency
// (a program that embeds the library).
func Build() BuildInfo {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return BuildInfo{Version: "unknown", GoVersion: "unknown"}
	}
	return buildFrom(bi)
}

func buildFrom(bi *debug.BuildInfo) BuildInfo {
	b := BuildInfo{Version: "unknown", GoVersion: bi.GoVersion}
	mod := &bi.Main
	if mod.Path != ModulePath {
		mod = nil
		for _, d := range bi.Deps {
			if d.Path == ModulePath {
				mod = d
				if d.Replace != nil {
					mod = d.Replace
				}
				break
			}
		}
	}
	if mod != nil && mod.Version != "" {
		b.Version = mod.Version
	}
	if mod == &bi.Main {
		var dirty bool
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Revision = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if dirty && b.Revision != "" {
			b.Revision += "-dirty"
		}
	}
	return b
}

// String formats b for -version: "v1.2.3 (rev abc123, go1.26.3)".
func (b BuildInfo) String() string {
	var sb strings.Builder
	sb.WriteString(b.Version)
	sb.WriteString(" (")
	if b.Revision != "" {
		sb.WriteString("rev ")
		sb.WriteString(b.Revision)
		sb.WriteString(", ")
	}
	sb.WriteString(b.GoVersion)
	sb.WriteString(")")
	return sb.String()
}

// BuildInfo writes teredo_build_info, the constant 1 with the running
// code's version as labels, the usual way to put a version on a
// dashboard.
func (w *Writer) BuildInfo(b BuildInfo) {
	w.Header("teredo_build_info", "Version, VCS revision and Go version of the running code, as labels; always 1.", Gauge)
	w.Sample("teredo_build_info", 1, "version", b.Version, "revision", b.Revision, "goversion", b.GoVersion)
}
