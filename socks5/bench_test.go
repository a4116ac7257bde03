package socks5

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
)

// startSink runs a destination that reads to EOF, then writes the number
// of bytes it read, so a benchmark can tell the data all arrived.
func startSink(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				c.Write(binary.BigEndian.AppendUint64(nil, uint64(n)))
			}()
		}
	}()
	b.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ln.Addr().String()
}

// BenchmarkConnectThroughput measures one CONNECT stream, client to
// destination, over loopback.
func BenchmarkConnectThroughput(b *testing.B) {
	sink := startSink(b)
	server := startServer(b, &Server{Dial: loopbackDial(nil)})
	c, err := proxyDial(b, server, sink, nil)
	if err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, 128<<10)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	c.CloseWrite()
	var got [8]byte
	if _, err := io.ReadFull(c, got[:]); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if n := binary.BigEndian.Uint64(got[:]); n != uint64(b.N*len(chunk)) {
		b.Fatalf("sink got %d bytes, want %d", n, b.N*len(chunk))
	}
}

// BenchmarkConnectHandshake measures a whole CONNECT session: greeting,
// request, dial, reply, and teardown.
func BenchmarkConnectHandshake(b *testing.B) {
	echo := startEcho(b)
	server := startServer(b, &Server{Dial: loopbackDial(nil)})
	b.ReportAllocs()
	for range b.N {
		c, err := proxyDial(b, server, echo, nil)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}
