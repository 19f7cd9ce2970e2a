// yamux_goaway checks how plugbay's Python yamux takes a normal GoAway from hashicorp/yamux itself.
//
//	yamux_goaway ADDRESS
//
// Dials the unix socket ADDRESS as a yamux client, opens a stream, checks the peer echoes a block
// back, then calls Session.GoAway() (which, in hashicorp/yamux, only stops the peer opening new
// streams) and checks the same stream still echoes. Prints "ok" and then keeps the session until
// the peer closes it (the peer checks meanwhile that it may open no new stream), or prints the
// error and exits 1. A watchdog ends it after 60 s.
package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"time"

	"plugbay.test/yamuxutil"
)

func echoed(st net.Conn, block []byte) error {
	if _, err := st.Write(block); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got := make([]byte, len(block))
	if _, err := io.ReadFull(st, got); err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if !bytes.Equal(got, block) {
		return fmt.Errorf("the echo differs")
	}
	return nil
}

func main() {
	sess := yamuxutil.DialSession("yamux_goaway", 60*time.Second, true)
	st, err := sess.Open()
	if err != nil {
		yamuxutil.Fail(fmt.Errorf("open: %w", err))
	}
	block := bytes.Repeat([]byte("0123456789"), 100)
	if err := echoed(st, block); err != nil {
		yamuxutil.Fail(fmt.Errorf("before the GoAway: %w", err))
	}
	if err := sess.GoAway(); err != nil {
		yamuxutil.Fail(fmt.Errorf("goaway: %w", err))
	}
	// written after the GoAway on the same connection: the peer reads the GoAway first
	if err := echoed(st, block); err != nil {
		yamuxutil.Fail(fmt.Errorf("the open stream after the GoAway: %w", err))
	}
	st.Close()
	fmt.Println("ok")
	<-sess.CloseChan()
}
