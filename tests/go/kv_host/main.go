// kv_host is a go-plugin 1.0.1 host, drop-in for go-plugin's examples/grpc host:
//
//	kv_host [--automtls] [-v] [--timeout 60s] put KEY VALUE
//	kv_host [--automtls] [-v] [--timeout 60s] get KEY      (prints the value)
//	kv_host [--automtls] [-v] [--timeout 60s] bench N      (prints JSON latency figures)
//
// The plugin command comes from KV_PLUGIN and runs through `sh -c`, like the Go example.
// Only gRPC is allowed. On stderr it reports the negotiated handshake and, after client.Kill
// (GRPCController.Shutdown, 2 s grace, then a forced kill), whether the plugin exited gracefully:
//
//	kv_host: handshake protocol=grpc version=1 network=unix address=/tmp/plugin123 automtls=true start_ms=12.3
//	kv_host: kill graceful=true
//
// Errors print "error: ..." on stdout (as the Go example does) and exit 1; exit 2 is a usage error
// and exit 3 means the --timeout watchdog fired (the plugin's process group is killed first).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"plugbay.test/hostutil"
	kvproto "plugbay.test/kvproto"
)

type kvPlugin struct {
	plugin.NetRPCUnsupportedPlugin
}

func (p *kvPlugin) GRPCServer(broker *plugin.GRPCBroker, s *grpc.Server) error {
	return fmt.Errorf("kv_host only consumes the kv_grpc plugin")
}

func (p *kvPlugin) GRPCClient(ctx context.Context, broker *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return kvproto.NewKVClient(c), nil
}

func main() {
	autoMTLS := flag.Bool("automtls", false, "negotiate go-plugin AutoMTLS with the plugin")
	verbose := flag.Bool("v", false, "show go-plugin's client log and the plugin's log lines on stderr")
	timeout := flag.Duration("timeout", 60*time.Second, "exit with code 3 when the whole run takes longer")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: kv_host [--automtls] [-v] [--timeout D] put KEY VALUE | get KEY | bench N\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	args := flag.Args()
	if len(args) < 2 || (args[0] == "put" && len(args) != 3) || (args[0] != "put" && len(args) != 2) {
		flag.Usage()
		os.Exit(2)
	}
	host := hostutil.NewHost("kv_host", "KV_PLUGIN", *verbose)
	host.Watchdog(*timeout)
	if err := run(host, args, *autoMTLS); err != nil {
		host.Fail(fmt.Sprintf("error: %v", err))
	}
}

func run(host *hostutil.Host, args []string, autoMTLS bool) error {
	started := time.Now()
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  hostutil.Handshake,
		Plugins:          map[string]plugin.Plugin{"kv_grpc": &kvPlugin{}},
		Cmd:              host.Cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         autoMTLS,
		Logger:           host.Logger(),
	})
	defer host.Kill(client)

	rpcClient, err := client.Client()
	if err != nil {
		return err
	}
	raw, err := rpcClient.Dispense("kv_grpc")
	if err != nil {
		return err
	}
	kv := raw.(kvproto.KVClient)
	host.ReportHandshake(client, autoMTLS, started)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	switch args[0] {
	case "put":
		_, err = kv.Put(ctx, &kvproto.PutRequest{Key: args[1], Value: []byte(args[2])})
		return err
	case "get":
		resp, err := kv.Get(ctx, &kvproto.GetRequest{Key: args[1]})
		if err != nil {
			return err
		}
		fmt.Println(string(resp.Value))
		return nil
	case "bench":
		n, err := strconv.Atoi(args[1])
		if err != nil || n < 1 {
			return fmt.Errorf("bench needs a positive call count, got %q", args[1])
		}
		return bench(kv, n, started, autoMTLS)
	default:
		return fmt.Errorf("please only use 'get', 'put' or 'bench', given: %q", args[0])
	}
}

// bench: one Put is the first call (start_to_first_call covers launch, handshake, dial and it),
// then n Gets of that key measured one by one.
func bench(kv kvproto.KVClient, n int, started time.Time, autoMTLS bool) error {
	call := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), 30*time.Second)
	}
	ctx, cancel := call()
	_, err := kv.Put(ctx, &kvproto.PutRequest{Key: "bench", Value: []byte("value")})
	cancel()
	if err != nil {
		return err
	}
	first := time.Since(started)
	lat := make([]float64, 0, n)
	t0 := time.Now()
	for i := 0; i < n; i++ {
		ctx, cancel := call()
		s := time.Now()
		_, err := kv.Get(ctx, &kvproto.GetRequest{Key: "bench"})
		lat = append(lat, float64(time.Since(s).Nanoseconds())/1000)
		cancel()
		if err != nil {
			return err
		}
	}
	hostutil.PrintBench(lat, first, time.Since(t0), autoMTLS)
	return nil
}
