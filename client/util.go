package client

import (
	"cmp"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash/maphash"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/teredo-go/teredo/proto"
)

// mac returns HMAC-SHA256 under the client's secret key of a label and
// parts. The bubble-source secret and echo nonces come from it, so that replies can be
// checked without keeping per-packet state and cannot be guessed.
func (c *Client) mac(label string, parts ...[]byte) [32]byte {
	h := hmac.New(sha256.New, c.key[:])
	h.Write([]byte(label))
	for _, p := range parts {
		h.Write(p)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// bubbleSource is the link-local source of our bubbles to peer (see
// proto.BubbleSource).
func (c *Client) bubbleSource(peer [16]byte) netip.Addr {
	return proto.BubbleSource(&c.bubbleKey, &peer)
}

// echoNonce derives the 64-bit nonce of an echo test series towards dst
// started at time t.
func (c *Client) echoNonce(src, dst [16]byte, t time.Time) [8]byte {
	return c.timedNonce("echo", src, dst, t)
}

// timedNonce is a 64-bit nonce for an exchange between src and dst started
// at time t, keyed by label: an HMAC, so that no reader of Config.Rand is
// needed off the client's lock.
func (c *Client) timedNonce(label string, src, dst [16]byte, t time.Time) [8]byte {
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], uint64(t.UnixNano()))
	m := c.mac(label, src[:], dst[:], ts[:])
	return [8]byte(m[:8])
}

// echoBody is id, sequence and payload of our echo requests: 16 bytes of
// ICMPv6 message, well under the 88 bytes servers forward.
func echoParts(n [8]byte) (id, seq uint16, data []byte) {
	return binary.BigEndian.Uint16(n[0:2]), binary.BigEndian.Uint16(n[2:4]), n[:]
}

// isEcho reports whether an ICMPv6 echo body (after type, code, checksum)
// carries nonce n.
func isEcho(body []byte, n [8]byte) bool {
	return len(body) == 12 && [8]byte(body[4:12]) == n && [4]byte(body[0:4]) == [4]byte(n[0:4])
}

// dropReason classifies discarded packets for Status.
type dropReason int

const (
	dropMalformed dropReason = iota
	dropNotQualified
	dropNotOurs
	dropLinkLocalSource
	dropMulticast
	dropNonGlobal
	dropQueueFull
	dropUnreachable
	dropRAInvalid
	dropRANonce
	dropUnverifiedBubble
	dropUnverifiedSource
	dropUnknownServerPacket
	dropSendError
	dropICMPRateLimit
	dropBadSource
	dropClosed
	dropDiscovery
	dropTruncated
	dropNotIPv6
	dropBadLength
	dropIndication
	dropEchoRate
	dropAnswerRate
	dropBadTrailer
	dropBubbleNonce
	numDropReasons
)

var dropNames = [numDropReasons]string{
	"malformed", "not-qualified", "not-our-address", "link-local-source",
	"multicast", "non-global-ipv4", "queue-full", "unreachable",
	"ra-invalid", "ra-nonce", "unverified-bubble", "unverified-source",
	"server-packet", "send-error", "icmp-rate-limit", "bad-source", "closed",
	"discovery", "truncated", "not-ipv6", "bad-length", "bad-indication",
	"echo-rate-limit", "answer-rate-limit", "bad-trailer", "bubble-nonce",
}

type counters struct {
	txFast, txQueued, txFlushed    atomic.Uint64
	rxDelivered, rxHeldDelivered   atomic.Uint64
	rs, ra, bubbles, bubbleReplies atomic.Uint64
	echo, icmpErrors               atomic.Uint64
	relayFailovers                 atomic.Uint64
	ttlBubbles                     atomic.Uint64
	mapOpens, mapOpened            atomic.Uint64
	drops                          [numDropReasons]atomic.Uint64
}

func (c *counters) drop(r dropReason) { c.drops[r].Add(1) }

func (c *counters) snapshot() Counters {
	s := Counters{
		TxFast: c.txFast.Load(), TxQueued: c.txQueued.Load(), TxFlushed: c.txFlushed.Load(),
		RxDelivered: c.rxDelivered.Load(), RxHeldDelivered: c.rxHeldDelivered.Load(),
		RS: c.rs.Load(), RA: c.ra.Load(), Bubbles: c.bubbles.Load(), BubbleReplies: c.bubbleReplies.Load(),
		EchoRequests: c.echo.Load(), ICMPErrors: c.icmpErrors.Load(),
		RelayFailovers: c.relayFailovers.Load(),
		Drops:          make(map[string]uint64),
	}
	s.TTLBubbles = c.ttlBubbles.Load()
	s.PortMapOpens, s.PortMapOpened = c.mapOpens.Load(), c.mapOpened.Load()
	for i := range c.drops {
		if n := c.drops[i].Load(); n > 0 {
			s.Drops[dropNames[i]] = n
		}
	}
	return s
}

// dropParse counts a Packet.Parse failure.
func (c *counters) dropParse(err error) {
	switch {
	case errors.Is(err, proto.ErrTruncated):
		c.drop(dropTruncated)
	case errors.Is(err, proto.ErrNotIPv6):
		c.drop(dropNotIPv6)
	case errors.Is(err, proto.ErrBadLength):
		c.drop(dropBadLength)
	case errors.Is(err, proto.ErrIndication):
		c.drop(dropIndication)
	default:
		c.drop(dropMalformed)
	}
}

// ICMPv6 errors are limited like Miredo's: 10 per second, here as a token
// bucket with a burst of 10 so that a whole failed queue is answered.
const (
	icmpRate  = 10
	icmpBurst = 10
)

// unreachable delivers an ICMPv6 Destination Unreachable, code 0 (no route:
// one of the two codes gVisor acts on), about the outbound packet pkt.
func (c *Client) unreachable(pkt []byte, now time.Time) {
	if len(pkt) < proto.IPv6HeaderLen || !proto.MayReplyWithError(pkt) {
		return
	}
	if !c.icmpLimit.Allow(now) {
		c.ctr.drop(dropICMPRateLimit)
		return
	}
	// Before any server is known, 0.0.0.0 stands in for one.
	src := proto.ServerLinkLocal(cmp.Or(c.primary, netip.IPv4Unspecified()))
	if l := c.up.Load(); l != nil {
		src = l.errSrc
	} else {
		c.mu.Lock()
		if c.q.srv.IsValid() {
			src = proto.ServerLinkLocal(c.q.srv)
		}
		c.mu.Unlock()
	}
	c.ctr.icmpErrors.Add(1)
	c.cfg.Deliver(proto.AppendICMPv6Error(nil, src, proto.ICMPDestUnreachable, proto.UnreachNoRoute, 0, pkt))
}

// Direct bubbles answering indirect ones are limited per destination; a
// small hashed table of last-reply times is enough, as a collision only
// delays a reply.
const (
	replySlots    = 1024
	replyInterval = time.Second
)

type replySlot struct {
	to netip.AddrPort
	at time.Time
}

func (c *Client) allowReply(to netip.AddrPort, now time.Time) bool {
	a := to.Addr().As4()
	var b [6]byte
	copy(b[:], a[:])
	binary.BigEndian.PutUint16(b[4:], to.Port())
	i := maphash.Bytes(c.seed, b[:]) % replySlots
	c.replyMu.Lock()
	defer c.replyMu.Unlock()
	s := &c.replySeen[i]
	if s.to == to && now.Sub(s.at) < replyInterval {
		return false
	}
	s.to, s.at = to, now
	return true
}
