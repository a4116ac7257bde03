package client

import (
	"net/netip"
	"time"

	"github.com/teredo-go/teredo/proto"
)

// directBubble answers, with Config.AnswerDirectBubbles, a peer's direct
// bubble whose source is the link-local address it derives for the bubble
// exchange: the answer goes back to where it came from, addressed to that
// link-local source, as the answer to an indirect bubble is (RFC 4380
// §5.2.3), so the peer recognises it and trusts us at the mapping it came
// through. Behind a port mapping this is how a peer gets through when the
// server's relayed bubble does not arrive (see Config.AnswerDirectBubbles).
// The answer is rate limited per destination like every bubble reply.
func (c *Client) directBubble(src [16]byte, from netip.AddrPort, l *link, now time.Time) {
	if !c.glob(from.Addr()) || from.Port() == 0 {
		c.ctr.drop(dropNonGlobal)
		return
	}
	if !c.allowReply(from, now) {
		return
	}
	c.ctr.bubbleReplies.Add(1)
	c.write(proto.AppendBubble(nil, l.ip, netip.AddrFrom16(src), 0), from)
}
