// render_template executes an Ollama TEMPLATE with Go's text/template, the way Ollama prepares it,
// so tests can compare Go's output with the Jinja chat template it was translated from.
//
// Usage: render_template TEMPLATE_FILE < conversations.json
// stdin: a JSON array of data objects {"Messages": [{"Role": ..., "Content": ..., "ToolCalls": [{"Function":
// {"Name": ..., "Arguments": {...}}}]}], "Tools": [OpenAI tool objects], "Prompt": ...};
// stdout: a JSON array with the rendered string for each one.
//
// Like Ollama's template package (template/template.go, read at ollama fb30760), it parses with
// missingkey=zero and a `json` function, merges consecutive messages of the same role (tool results
// excepted), sets .System to all system messages joined by "\n\n", gives a call's arguments as a map
// (printed as compact JSON) and .Tools as structs whose JSON has Ollama's key order.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type Arguments map[string]any

func (a Arguments) String() string {
	b, _ := json.Marshal(map[string]any(a))
	return string(b)
}

type ToolCall struct {
	Function struct {
		Name      string
		Arguments Arguments
	}
}

type Message struct {
	Role      string
	Content   string
	ToolCalls []ToolCall
}

// PropertyType is one JSON type as a string, several as a list, as api.PropertyType marshals.
type PropertyType []string

func (p *PropertyType) UnmarshalJSON(data []byte) error {
	var one string
	if json.Unmarshal(data, &one) == nil {
		*p = []string{one}
		return nil
	}
	return json.Unmarshal(data, (*[]string)(p))
}

func (p PropertyType) MarshalJSON() ([]byte, error) {
	if len(p) == 1 {
		return json.Marshal(p[0])
	}
	return json.Marshal([]string(p))
}

type Property struct {
	AnyOf       []Property          `json:"anyOf,omitempty"`
	Type        PropertyType        `json:"type,omitempty"`
	Items       any                 `json:"items,omitempty"`
	Description string              `json:"description,omitempty"`
	Enum        []any               `json:"enum,omitempty"`
	Properties  map[string]Property `json:"properties,omitempty"`
	Required    []string            `json:"required,omitempty"`
}

type Tool struct {
	Type     string `json:"type"`
	Items    any    `json:"items,omitempty"`
	Function struct {
		Name        string `json:"name"`
		Description string `json:"description"`
		Parameters  struct {
			Type       string              `json:"type"`
			Defs       any                 `json:"$defs,omitempty"`
			Items      any                 `json:"items,omitempty"`
			Required   []string            `json:"required,omitempty"`
			Properties map[string]Property `json:"properties"`
		} `json:"parameters"`
	} `json:"function"`
}

type Data struct {
	Messages []Message
	Tools    []Tool
	Prompt   string
}

func collate(messages []Message) (string, []*Message) {
	var system []string
	var merged []*Message
	for i := range messages {
		if messages[i].Role == "system" {
			system = append(system, messages[i].Content)
		}
		if len(merged) > 0 && merged[len(merged)-1].Role == messages[i].Role && messages[i].Role != "tool" {
			merged[len(merged)-1].Content += "\n\n" + messages[i].Content
		} else {
			merged = append(merged, &messages[i])
		}
	}
	return strings.Join(system, "\n\n"), merged
}

func render(tmpl *template.Template, data Data) (string, error) {
	system, messages := collate(data.Messages)
	var out strings.Builder
	err := tmpl.Execute(&out, map[string]any{
		"System": system, "Messages": messages, "Prompt": data.Prompt, "Response": "", "Tools": data.Tools,
	})
	return out.String(), err
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 2 {
		fail(fmt.Errorf("usage: render_template TEMPLATE_FILE < conversations.json"))
	}
	source, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail(err)
	}
	funcs := template.FuncMap{"json": func(v any) string { b, _ := json.Marshal(v); return string(b) }}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(string(source))
	if err != nil {
		fail(err)
	}
	var inputs []Data
	if err := json.NewDecoder(os.Stdin).Decode(&inputs); err != nil {
		fail(err)
	}
	outputs := make([]string, 0, len(inputs))
	for _, data := range inputs {
		text, err := render(tmpl, data)
		if err != nil {
			fail(err)
		}
		outputs = append(outputs, text)
	}
	if err := json.NewEncoder(os.Stdout).Encode(outputs); err != nil {
		fail(err)
	}
}
