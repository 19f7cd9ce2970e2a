// misbehave is a go-plugin 1.0.1 plugin (cookie BASIC_PLUGIN=hello) that goes wrong on purpose,
// so the host-side error paths can be tested against real Go code. MISBEHAVE_MODE selects:
//
//	kv (default)           a working KV plugin (kv_grpc, proto.KV, files kv_<key>) with trap keys for Get/Put:
//	                         __die__    the process exits with MISBEHAVE_EXIT_CODE (default 7) mid-call
//	                         __hang__   the call blocks until the caller gives up (or MISBEHAVE_MAX_SECONDS);
//	                                    it logs the deadline it got (deadline_in, seconds or "none") and,
//	                                    when the caller's side ends it, "hang ended by its caller" (reason)
//	                         __log__    logs one hclog JSON line per level (trace..error) and one raw
//	                                    non-JSON stderr line, then Get returns "logged"
//	                         __env__    Get returns JSON of the plugin's PLUGIN_* and BASIC_PLUGIN env vars
//	                         __panic__  the call's goroutine panics: the process dies with Go's
//	                                    "panic: ..." line and a goroutine dump on stderr (exit code 2)
//	                       MISBEHAVE_VERSIONS="2,3" serves the KV plugin only under those app protocol versions.
//	exit                   writes MISBEHAVE_STDERR (default: a two-line error) to stderr and exits with
//	                       MISBEHAVE_EXIT_CODE (default 3) before any handshake
//	line                   prints MISBEHAVE_LINE verbatim (plus "\n") as its handshake, then idles
//	silent                 never prints a handshake; idles
//	netrpc                 serves a real go-plugin net/rpc plugin (handshake protocol "netrpc")
//	linger                 the kv mode, but after GRPCController.Shutdown the process does not exit
//
// "Idles" means sleeping up to MISBEHAVE_MAX_SECONDS (default 120) so nothing outlives a test run.
// Every mode logs through hclog as JSON on the original stderr, as go-plugin plugins do.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io/ioutil"
	"os"
	"strconv"
	"strings"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"net/rpc"

	kvproto "plugbay.test/kvproto"
)

var handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "BASIC_PLUGIN",
	MagicCookieValue: "hello",
}

var (
	logger     hclog.Logger
	origStderr = os.Stderr
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

func idle() {
	time.Sleep(time.Duration(envInt("MISBEHAVE_MAX_SECONDS", 120)) * time.Second)
	logger.Error("misbehave idled for MISBEHAVE_MAX_SECONDS; exiting")
	os.Exit(4)
}

// --- gRPC KV with trap keys ---

type kvServer struct{}

func trap(ctx context.Context, key string) (value []byte, handled bool, err error) {
	switch key {
	case "__die__":
		code := envInt("MISBEHAVE_EXIT_CODE", 7)
		logger.Error("dying during a call", "exit_code", code)
		os.Exit(code)
	case "__hang__":
		// what is left of the call's deadline as this process got it ("none": the call has none), and
		// a line when the caller's side ends the hang: a proxy's test sees both reach the plugin
		deadline := "none"
		if at, ok := ctx.Deadline(); ok {
			deadline = strconv.FormatFloat(time.Until(at).Seconds(), 'f', 3, 64)
		}
		logger.Warn("hanging during a call", "deadline_in", deadline)
		select {
		case <-ctx.Done():
			logger.Warn("hang ended by its caller", "reason", ctx.Err().Error())
			return nil, true, ctx.Err()
		case <-time.After(time.Duration(envInt("MISBEHAVE_MAX_SECONDS", 120)) * time.Second):
			return nil, true, fmt.Errorf("hang ended after MISBEHAVE_MAX_SECONDS")
		}
	case "__panic__":
		panic("misbehave: panicking during a call, as asked")
	case "__log__":
		logger.Trace("trace message", "n", 1)
		logger.Debug("debug message", "n", 2)
		logger.Info("info message", "n", 3, "key", "value")
		logger.Warn("warn message", "n", 4)
		logger.Error("error message", "n", 5, "error", "something broke")
		fmt.Fprintln(origStderr, "a raw stderr line that is not JSON")
		return []byte("logged"), true, nil
	case "__env__":
		env := map[string]string{}
		for _, kv := range os.Environ() {
			parts := strings.SplitN(kv, "=", 2)
			if strings.HasPrefix(parts[0], "PLUGIN_") || parts[0] == handshake.MagicCookieKey {
				env[parts[0]] = parts[1]
			}
		}
		out, _ := json.Marshal(env)
		return out, true, nil
	}
	return nil, false, nil
}

func (kvServer) Put(ctx context.Context, req *kvproto.PutRequest) (*kvproto.Empty, error) {
	if _, handled, err := trap(ctx, req.Key); handled {
		return &kvproto.Empty{}, err
	}
	return &kvproto.Empty{}, ioutil.WriteFile("kv_"+req.Key, req.Value, 0644)
}

func (kvServer) Get(ctx context.Context, req *kvproto.GetRequest) (*kvproto.GetResponse, error) {
	if v, handled, err := trap(ctx, req.Key); handled {
		return &kvproto.GetResponse{Value: v}, err
	}
	v, err := ioutil.ReadFile("kv_" + req.Key)
	return &kvproto.GetResponse{Value: v}, err
}

type kvPlugin struct {
	plugin.NetRPCUnsupportedPlugin
}

func (kvPlugin) GRPCServer(broker *plugin.GRPCBroker, s *grpc.Server) error {
	kvproto.RegisterKVServer(s, kvServer{})
	return nil
}

func (kvPlugin) GRPCClient(ctx context.Context, broker *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return kvproto.NewKVClient(c), nil
}

func serveKV() {
	cfg := &plugin.ServeConfig{
		HandshakeConfig: handshake,
		GRPCServer:      plugin.DefaultGRPCServer,
		Logger:          logger,
	}
	plugins := map[string]plugin.Plugin{"kv_grpc": kvPlugin{}}
	if vs := os.Getenv("MISBEHAVE_VERSIONS"); vs != "" {
		cfg.VersionedPlugins = map[int]plugin.PluginSet{}
		for _, s := range strings.Split(vs, ",") {
			v, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil {
				logger.Error("bad MISBEHAVE_VERSIONS", "value", vs)
				os.Exit(2)
			}
			cfg.VersionedPlugins[v] = plugins
		}
	} else {
		cfg.Plugins = plugins
	}
	plugin.Serve(cfg)
}

// --- net/rpc ---

type PingServer struct{}

func (PingServer) Ping(arg string, reply *string) error {
	*reply = "pong " + arg
	return nil
}

type netrpcPlugin struct{}

func (netrpcPlugin) Server(*plugin.MuxBroker) (interface{}, error) { return PingServer{}, nil }
func (netrpcPlugin) Client(b *plugin.MuxBroker, c *rpc.Client) (interface{}, error) {
	return c, nil
}

func main() {
	logger = hclog.New(&hclog.LoggerOptions{
		Name:       "misbehave",
		Level:      hclog.Trace,
		Output:     origStderr,
		JSONFormat: true,
	})
	mode := os.Getenv("MISBEHAVE_MODE")
	if mode == "" {
		mode = "kv"
	}
	if mode != "exit" && os.Getenv(handshake.MagicCookieKey) != handshake.MagicCookieValue {
		// Same refusal as plugin.Serve, also for the modes that never reach it.
		fmt.Fprintln(os.Stderr, "This binary is a plugin. These are not meant to be executed directly.")
		os.Exit(1)
	}
	logger.Info("misbehave starting", "mode", mode)
	switch mode {
	case "kv":
		serveKV()
	case "linger":
		serveKV()
		logger.Warn("served until Shutdown; lingering instead of exiting")
		idle()
	case "exit":
		msg := os.Getenv("MISBEHAVE_STDERR")
		if msg == "" {
			msg = "misbehave: cannot open database /nonexistent/db: no such file or directory\nmisbehave: giving up"
		}
		fmt.Fprintln(os.Stderr, msg)
		os.Exit(envInt("MISBEHAVE_EXIT_CODE", 3))
	case "line":
		fmt.Println(os.Getenv("MISBEHAVE_LINE"))
		idle()
	case "silent":
		idle()
	case "netrpc":
		plugin.Serve(&plugin.ServeConfig{
			HandshakeConfig: handshake,
			Plugins:         map[string]plugin.Plugin{"kv": netrpcPlugin{}},
			Logger:          logger,
		})
	default:
		fmt.Fprintf(os.Stderr, "misbehave: unknown MISBEHAVE_MODE %q (kv, exit, line, silent, netrpc, linger)\n", mode)
		os.Exit(2)
	}
}
