// yamux_noaccept checks what plugbay's Python yamux does with a hashicorp/yamux peer that accepts no stream.
//
//	yamux_noaccept ADDRESS
//
// Dials the unix socket ADDRESS and runs a yamux server session (the peer is the client) that never
// calls Accept: hashicorp/yamux acknowledges a stream (ACK) only when it is accepted, while its
// receive loop keeps reading and answering pings. Prints "closed" once the peer drops the session
// and exits 0. A watchdog ends it after 30 s ("error: watchdog", exit 3).
package main

import (
	"fmt"
	"time"

	"plugbay.test/yamuxutil"
)

func main() {
	sess := yamuxutil.DialSession("yamux_noaccept", 30*time.Second, false)
	<-sess.CloseChan()
	fmt.Println("closed")
}
