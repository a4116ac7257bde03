package socks5

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestRequestRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want request
	}{
		{"IPv4", []byte{5, 1, 0, 1, 192, 0, 2, 1, 0, 80}, request{cmdConnect, addr{ip: netip.MustParseAddr("192.0.2.1"), port: 80}}},
		{"IPv6", append(append([]byte{5, 3, 0, 4}, netip.MustParseAddr("2001:db8::1").AsSlice()...), 1, 187),
			request{cmdAssociate, addr{ip: netip.MustParseAddr("2001:db8::1"), port: 443}}},
		{"name", append([]byte{5, 1, 0, 3, 11}, "example.org\x00\x16"...), request{cmdConnect, addr{name: "example.org", port: 22}}},
		{"IPv6 literal as name", append([]byte{5, 1, 0, 3, 3}, "::1\x00\x50"...), request{cmdConnect, addr{ip: netip.IPv6Loopback(), port: 80}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readRequest(bytes.NewReader(tt.in))
			if err != nil || got != tt.want {
				t.Fatalf("readRequest = %+v, %v; want %+v", got, err, tt.want)
			}
			again, err := readRequest(bytes.NewReader(appendRequest(nil, got)))
			if err != nil || again != got {
				t.Fatalf("round trip = %+v, %v", again, err)
			}
		})
	}
}

func TestRequestErrors(t *testing.T) {
	tests := []struct {
		name  string
		in    []byte
		reply Reply // 0 when the connection is just closed
	}{
		{"empty", nil, 0},
		{"version 4", []byte{4, 1, 0, 1, 1, 2, 3, 4, 0, 80}, 0},
		{"truncated IPv6", []byte{5, 1, 0, 4, 1, 2, 3}, 0},
		{"truncated port", []byte{5, 1, 0, 1, 1, 2, 3, 4, 0}, 0},
		{"unknown ATYP", []byte{5, 1, 0, 2}, ReplyAddressTypeNotSupported},
		{"empty name", []byte{5, 1, 0, 3, 0, 0, 80}, ReplyGeneralFailure},
		{"name with slash", append([]byte{5, 1, 0, 3, 3}, "a/b\x00\x50"...), ReplyGeneralFailure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := readRequest(bytes.NewReader(tt.in))
			if err == nil {
				t.Fatal("no error")
			}
			var re *requestError
			switch {
			case tt.reply == 0 && errors.As(err, &re):
				t.Fatalf("error %v carries reply %v, want a plain close", err, re.reply)
			case tt.reply != 0 && (!errors.As(err, &re) || re.reply != tt.reply):
				t.Fatalf("error %v, want reply %v", err, tt.reply)
			}
		})
	}
}

func TestUDPHeader(t *testing.T) {
	v6 := netip.MustParseAddr("2001:db8::53")
	tests := []struct {
		in      []byte
		dst     addr
		frag    byte
		payload string
		err     bool
	}{
		{in: []byte{0, 0, 0, 1, 127, 0, 0, 1, 0, 53, 'q'}, dst: addr{ip: netip.MustParseAddr("127.0.0.1"), port: 53}, payload: "q"},
		{in: append(append([]byte{0, 0, 0, 4}, v6.AsSlice()...), 0, 53), dst: addr{ip: v6, port: 53}},
		{in: append([]byte{0, 0, 2, 3, 4}, "a.io\x01\x00data"...), dst: addr{name: "a.io", port: 256}, frag: 2, payload: "data"},
		{in: []byte{0, 0, 0}, err: true},
		{in: []byte{0, 0, 0, 1, 127, 0, 0, 1, 0}, err: true},
		{in: []byte{0, 0, 0, 3, 5, 'a'}, err: true},
		{in: []byte{0, 0, 0, 3}, err: true},
		{in: []byte{0, 0, 0, 9, 0, 0}, err: true},
	}
	for _, tt := range tests {
		dst, frag, payload, err := parseUDPHeader(tt.in)
		if tt.err {
			if err == nil {
				t.Errorf("%x: no error", tt.in)
			}
			continue
		}
		if err != nil || dst != tt.dst || frag != tt.frag || string(payload) != tt.payload {
			t.Errorf("%x: got %+v frag %d %q %v", tt.in, dst, frag, payload, err)
		}
	}
}

func FuzzReadRequest(f *testing.F) {
	f.Add([]byte{5, 1, 0, 1, 127, 0, 0, 1, 0, 80})
	f.Add(append([]byte{5, 3, 0, 4}, make([]byte, 18)...))
	f.Add(append([]byte{5, 1, 0, 3, 11}, "example.org\x00\x16"...))
	f.Add(append([]byte{5, 1, 0, 3, 3}, "::1\x00\x50"...))
	f.Add([]byte{5, 1, 0, 3, 255})
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := readRequest(bytes.NewReader(b))
		if err != nil {
			return
		}
		enc := appendRequest(nil, req)
		r2 := bytes.NewReader(enc)
		again, err := readRequest(r2)
		if err != nil || again != req || r2.Len() != 0 {
			t.Fatalf("round trip: %+v → %x → %+v, %v", req, enc, again, err)
		}
	})
}

func FuzzUDPHeader(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 127, 0, 0, 1, 0, 53, 'q'})
	f.Add(append([]byte{0, 0, 1, 3, 4}, "a.io\x01\x00data"...))
	f.Add(append([]byte{0, 0, 0, 4}, make([]byte, 20)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		dst, _, payload, err := parseUDPHeader(b)
		if err != nil {
			return
		}
		enc := append(appendUDPHeader(nil, dst), payload...)
		dst2, frag2, payload2, err := parseUDPHeader(enc)
		if err != nil || dst2 != dst || frag2 != 0 || !bytes.Equal(payload, payload2) {
			t.Fatalf("round trip: %+v %x → %x → %+v %x, %v", dst, payload, enc, dst2, payload2, err)
		}
	})
}

// FuzzHandshake feeds arbitrary client bytes to a whole session: whatever
// comes in, the server must answer or close, never panic or hang.
func FuzzHandshake(f *testing.F) {
	f.Add([]byte{5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 80}, false)
	f.Add([]byte{5, 1, 2, 1, 1, 'u', 1, 'p', 5, 3, 0, 3, 1, 'a', 0, 0}, true)
	f.Add([]byte{5, 2, 0, 2, 5, 9, 0, 9}, false)
	f.Fuzz(func(t *testing.T, in []byte, auth bool) {
		refuse := fmt.Errorf("fuzz: %w", ErrNotAllowed)
		s := &Server{
			Dial:         func(context.Context, string, string) (net.Conn, error) { return nil, refuse },
			ListenPacket: func(context.Context) (net.PacketConn, error) { return nil, refuse },
		}
		if auth {
			s.Username, s.Password = "u", "p"
		}
		c := &scriptConn{r: bytes.NewReader(in)}
		s.init()
		ss := s.newSession(c)
		s.c.active.Add(1)
		s.serveSession(ss) // returns once input runs out, at the latest
		if out := c.w.Bytes(); len(out) > 0 && out[0] != socksVersion {
			t.Fatalf("answer %x does not start with the SOCKS version", out)
		}
		if st := s.Stats(); st.Replies[ReplySucceeded] != 0 || st.Active != 0 {
			t.Fatalf("stats after refused dials: %+v", st)
		}
	})
}

// scriptConn is a client that says in and then hangs up.
type scriptConn struct {
	r *bytes.Reader
	w bytes.Buffer
}

func (c *scriptConn) Read(b []byte) (int, error)  { return c.r.Read(b) }
func (c *scriptConn) Write(b []byte) (int, error) { return c.w.Write(b) }
func (c *scriptConn) Close() error                { return nil }
func (c *scriptConn) LocalAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1080}
}
func (c *scriptConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }
