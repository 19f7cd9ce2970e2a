// helmrender renders a Helm chart's templates the way `helm template` does, for the
// chart tests (no helm binary can run here): Go text/template with sprig's functions
// plus Helm's own (include, tpl, required, toYaml, fromYaml, toJson, lookup), values
// from values.yaml merged with override files, and .Release/.Chart/.Capabilities.
//
// Numbers are typed as Helm types them: float64 from values files (Helm reads YAML through JSON), int64
// from -set (Helm's --set), so a chart comparing a number from each is tested as Helm runs it.
//
// Usage: helmrender -chart DIR [-values FILE]... [-set PATH=VALUE]... [-release NAME] [-namespace NS]
// Prints every rendered manifest as "---\n# Source: CHART/templates/FILE\n...".
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io/ioutil"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	yaml2 "gopkg.in/yaml.v2"
	yaml3 "gopkg.in/yaml.v3"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func readYAML(path string) (map[string]interface{}, error) {
	data, err := ioutil.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]interface{}{}
	if err := yaml3.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return asJSONNumbers(out).(map[string]interface{}), nil
}

// asJSONNumbers makes every integer a float64, as Helm's YAML-through-JSON reading of a values file does.
func asJSONNumbers(v interface{}) interface{} {
	switch t := v.(type) {
	case map[string]interface{}:
		for k, e := range t {
			t[k] = asJSONNumbers(e)
		}
	case []interface{}:
		for i, e := range t {
			t[i] = asJSONNumbers(e)
		}
	case int:
		return float64(t)
	case int64:
		return float64(t)
	case uint64:
		return float64(t)
	}
	return v
}

// setValue is one -set PATH=VALUE as Helm's --set types it: an integer is int64, true/false a bool,
// null nil, anything else a string.
func setValue(assignment string) (map[string]interface{}, error) {
	path, raw, ok := strings.Cut(assignment, "=")
	if !ok || path == "" {
		return nil, fmt.Errorf("-set %q: want PATH=VALUE", assignment)
	}
	var value interface{} = raw
	if n, err := strconv.ParseInt(raw, 10, 64); err == nil {
		value = n
	} else if raw == "true" || raw == "false" {
		value = raw == "true"
	} else if raw == "null" {
		value = nil
	}
	keys := splitPath(path)
	out := map[string]interface{}{keys[len(keys)-1]: value}
	for i := len(keys) - 2; i >= 0; i-- {
		out = map[string]interface{}{keys[i]: out}
	}
	return out, nil
}

// splitPath splits a -set PATH at its dots, as Helm's --set does: "\." is a dot inside a key
// (podAnnotations.prometheus\.io/port).
func splitPath(path string) []string {
	var keys []string
	var key strings.Builder
	for i := 0; i < len(path); i++ {
		switch {
		case path[i] == '\\' && i+1 < len(path) && path[i+1] == '.':
			key.WriteByte('.')
			i++
		case path[i] == '.':
			keys = append(keys, key.String())
			key.Reset()
		default:
			key.WriteByte(path[i])
		}
	}
	return append(keys, key.String())
}

// merge overlays src onto dst the way Helm coalesces values: maps recursively, the rest replaced.
func merge(dst, src map[string]interface{}) map[string]interface{} {
	for k, v := range src {
		if sv, ok := v.(map[string]interface{}); ok {
			if dv, ok := dst[k].(map[string]interface{}); ok {
				dst[k] = merge(dv, sv)
				continue
			}
		}
		dst[k] = v
	}
	return dst
}

// toYaml writes numbers as Helm's does (through JSON): a float64 1000680000 as 1000680000, not 1.00068e+09.
func toYaml(v interface{}) string {
	asJSON, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	var plain interface{}
	if err := yaml3.Unmarshal(asJSON, &plain); err != nil {
		return ""
	}
	data, err := yaml2.Marshal(plain)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(data), "\n")
}

func fromYaml(s string) map[string]interface{} {
	out := map[string]interface{}{}
	if err := yaml3.Unmarshal([]byte(s), &out); err != nil {
		out["Error"] = err.Error()
	}
	return out
}

func main() {
	chart := flag.String("chart", "", "chart folder")
	release := flag.String("release", "plugbay", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	var valueFiles multiFlag
	flag.Var(&valueFiles, "values", "values override file (repeatable)")
	var sets multiFlag
	flag.Var(&sets, "set", "PATH=VALUE override applied after the files, typed as helm --set does (repeatable)")
	notes := flag.Bool("notes", false, "print the rendered templates/NOTES.txt instead of the manifests (as helm install shows it)")
	flag.Parse()
	if *chart == "" {
		fmt.Fprintln(os.Stderr, "helmrender: -chart is required")
		os.Exit(2)
	}
	if err := render(*chart, *release, *namespace, valueFiles, sets, *notes); err != nil {
		fmt.Fprintln(os.Stderr, "helmrender:", err)
		os.Exit(1)
	}
}

func render(chartDir, release, namespace string, valueFiles, sets []string, notes bool) error {
	meta, err := readYAML(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return err
	}
	values, err := readYAML(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		return err
	}
	for _, f := range valueFiles {
		over, err := readYAML(f)
		if err != nil {
			return err
		}
		values = merge(values, over)
	}
	for _, assignment := range sets {
		over, err := setValue(assignment)
		if err != nil {
			return err
		}
		values = merge(values, over)
	}
	chartName := fmt.Sprint(meta["name"])
	chartInfo := map[string]interface{}{}
	for k, v := range meta { // Helm exposes Chart.yaml keys capitalised: .Chart.Name, .Chart.AppVersion
		chartInfo[strings.ToUpper(k[:1])+k[1:]] = v
	}
	top := map[string]interface{}{
		"Values":  values,
		"Chart":   chartInfo,
		"Release": map[string]interface{}{"Name": release, "Namespace": namespace, "Service": "Helm", "IsInstall": true, "IsUpgrade": false, "Revision": 1},
		"Capabilities": map[string]interface{}{
			"KubeVersion": map[string]interface{}{"Version": "v1.30.0", "Major": "1", "Minor": "30"},
		},
		"Template": map[string]interface{}{"BasePath": chartName + "/templates"},
	}

	root := template.New("root").Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env") // Helm removes these: rendering must not depend on the environment
	delete(funcs, "expandenv")
	funcs["toYaml"] = toYaml
	funcs["fromYaml"] = fromYaml
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil || fmt.Sprint(v) == "" {
			return nil, fmt.Errorf("%s", msg)
		}
		return v, nil
	}
	funcs["lookup"] = func(...interface{}) map[string]interface{} { return map[string]interface{}{} }
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return buf.String(), err
	}
	root.Funcs(funcs)

	files, err := filepath.Glob(filepath.Join(chartDir, "templates", "*"))
	if err != nil {
		return err
	}
	sort.Strings(files)
	var manifests []string
	for _, f := range files {
		data, err := ioutil.ReadFile(f)
		if err != nil {
			return err
		}
		name := chartName + "/templates/" + filepath.Base(f)
		if _, err := root.New(name).Parse(string(data)); err != nil {
			return err
		}
		base := filepath.Base(f)
		if !strings.HasPrefix(base, "_") && (strings.HasSuffix(base, ".yaml") || strings.HasSuffix(base, ".yml")) {
			manifests = append(manifests, name)
		}
	}
	if notes { // helm renders the manifests as well: their fail/required calls still refuse the values
		manifests = append(manifests, chartName+"/templates/NOTES.txt")
	}
	for i, name := range manifests {
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, top); err != nil {
			return err
		}
		out := strings.ReplaceAll(buf.String(), "<no value>", "")
		if notes {
			if i == len(manifests)-1 {
				fmt.Print(out)
			}
			continue
		}
		if strings.TrimSpace(out) == "" {
			continue
		}
		fmt.Printf("---\n# Source: %s\n%s\n", name, strings.TrimSpace(out))
	}
	return nil
}
